"""pgq_jobs.isolated: jobs that must run alone, because a worker process died while they
ran and pgq cannot yet tell which of its jobs killed it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL 11+ adds the column without rewriting the table.
    op.add_column("pgq_jobs", sa.Column(
        "isolated", sa.Boolean(), nullable=False, server_default=sa.text("false"),
        comment="Runs alone in its worker process: it was running when a process died "
                "alongside others (a suspect), or it crashed one alone."))
    # Tiny: only isolated jobs waiting to run are in it. The producer asks it whether any
    # wait, and claims them one at a time when its process is otherwise empty.
    op.create_index(
        "pgq_jobs_isolated_idx", "pgq_jobs", ["queue", "priority", "run_at", "id"],
        postgresql_where=sa.text(
            "isolated AND state IN ('available', 'retryable', 'scheduled')"))


def downgrade() -> None:
    op.drop_index("pgq_jobs_isolated_idx", table_name="pgq_jobs")
    op.drop_column("pgq_jobs", "isolated")
