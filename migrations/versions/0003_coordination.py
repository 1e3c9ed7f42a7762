"""Coordination fallbacks: run-time lock rows and leader rows, by the database clock.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pgq_locks",
        sa.Column("key", sa.Text, primary_key=True, comment="Run-time lock key (e.g. sync:tenant:7)."),
        sa.Column("token", sa.Text, nullable=False, comment="Random token of the holder."),
        sa.Column("holder", sa.Text, nullable=False, comment="Worker holding the lock."),
        sa.Column("expires_at", TZ, nullable=False, comment="Expiry by the database clock."),
        comment="pgq run-time locks when Redis is unavailable (PostgreSQL fallback).",
    )
    op.execute(sa.schema.CreateSequence(sa.Sequence("pgq_leader_terms")))
    op.create_table(
        "pgq_leaders",
        sa.Column("name", sa.Text, primary_key=True, comment="Leadership role (e.g. maintenance)."),
        sa.Column("holder", sa.Text, nullable=False, comment="Process holding the role."),
        sa.Column("term", sa.BigInteger, nullable=False,
                  comment="Fencing token: larger for every new leadership, Redis or PostgreSQL."),
        sa.Column("expires_at", TZ, nullable=False, comment="Expiry by the database clock."),
        comment="pgq leader leases when Redis is unavailable (PostgreSQL fallback).",
    )


def downgrade() -> None:
    op.drop_table("pgq_leaders")
    op.execute(sa.schema.DropSequence(sa.Sequence("pgq_leader_terms")))
    op.drop_table("pgq_locks")
