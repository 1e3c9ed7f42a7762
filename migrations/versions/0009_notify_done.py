"""A job's waiter (issue 14 item 1, ``app.jobs.result``): ``pgq_jobs.notify_done``, set
by someone waiting for the job's final state, so that only such jobs send a
``NOTIFY pgq_done`` when they finish (a notification for every finished job would put a
``pg_notify``, and the commit-time lock every notifying transaction takes, on the
workers' hot path).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column("pgq_jobs", sa.Column(
        "notify_done", sa.Boolean, nullable=False, server_default=sa.text("false"),
        comment="Someone waits for this job's final state (app.jobs.result): its finish "
                "sends NOTIFY pgq_done with the job id."))


def downgrade() -> None:
    op.drop_column("pgq_jobs", "notify_done")
