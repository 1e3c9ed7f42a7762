"""Worker support: progress column, index of running jobs by lease owner.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pgq_jobs", sa.Column(
        "progress", postgresql.JSONB,
        comment="Latest progress the running task reported (JSON), flushed with heartbeats."))
    # Running jobs only (a small set): reclaim of expired leases and rescue of a dead
    # worker's jobs read it. lease_owner is set by the claim and never changed by
    # heartbeats, so heartbeat updates stay HOT.
    op.create_index("pgq_jobs_running_idx", "pgq_jobs", ["lease_owner"],
                    postgresql_where=sa.text("state = 'running'"))


def downgrade() -> None:
    op.drop_index("pgq_jobs_running_idx", table_name="pgq_jobs")
    op.drop_column("pgq_jobs", "progress")
