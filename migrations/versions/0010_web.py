"""The dashboard and HTTP API's tables (issue 16): ``pgq_api_keys``, the API's keys,
stored as hashes with their scopes, and ``pgq_idempotency_keys``, the keys of
idempotent enqueues (``Idempotency-Key``), each naming the job its first request made.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pgq_api_keys",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True,
                  comment="Key id."),
        sa.Column("name", sa.Text, nullable=False, unique=True,
                  comment="What the key is for, unique (shown in lists and audit)."),
        sa.Column("scopes", postgresql.ARRAY(sa.Text), nullable=False,
                  comment="What the key may do: enqueue, read, operate."),
        # The secret is 32 random bytes: nothing to guess, so a fast hash (SHA-256) is
        # enough and keeps every API request's check one index probe, no slow KDF.
        sa.Column("key_hash", sa.Text, nullable=False, unique=True,
                  comment="Hex SHA-256 of the secret (the secret itself is never stored)."),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="When the key was made."),
        sa.Column("created_by", sa.Text, comment="Who made it (free-text actor)."),
        sa.Column("last_used_at", TZ,
                  comment="Latest accepted use, to the minute (written at most once a minute)."),
        sa.Column("revoked_at", TZ, comment="When it was revoked; a revoked key is refused."),
        sa.Column("revoked_by", sa.Text, comment="Who revoked it."),
        comment="pgq HTTP API keys, hashed, with their scopes.",
    )
    op.create_table(
        "pgq_idempotency_keys",
        sa.Column("key", sa.Text, primary_key=True,
                  comment="The client's idempotency key."),
        sa.Column("fingerprint", sa.Text, nullable=False,
                  comment="What the first request asked for: the same key with another "
                          "fingerprint is refused."),
        sa.Column("job_id", sa.BigInteger,
                  comment="The job the first request enqueued (no foreign key: the key "
                          "outlives a pruned job)."),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.text("now()"),
                  comment="First use; the key is honoured for 24 hours, then replaced or pruned."),
        comment="pgq idempotent enqueues: one job per key for 24 hours.",
    )


def downgrade() -> None:
    op.drop_table("pgq_idempotency_keys")
    op.drop_table("pgq_api_keys")
