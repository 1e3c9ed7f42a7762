"""Storage parameters of pgq_jobs for a table that churns: fillfactor, so heartbeats
stay HOT updates, and autovacuum that keeps up with a queue's dead row versions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Written out, not imported from pgq.schema: a migration must keep meaning what it meant
# when it was written, whatever the schema module says later.
STORAGE = {
    "fillfactor": "85",
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_vacuum_insert_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.05",
    "autovacuum_vacuum_cost_delay": "0",
}


def upgrade() -> None:
    # Applies to pages written from now on; existing pages keep their fill until rewritten.
    options = ", ".join(f"{key} = {value}" for key, value in STORAGE.items())
    op.execute(f"ALTER TABLE pgq_jobs SET ({options})")


def downgrade() -> None:
    op.execute(f"ALTER TABLE pgq_jobs RESET ({', '.join(STORAGE)})")
