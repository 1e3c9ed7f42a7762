"""Failed jobs by their last error's type (issue 16): ``JobFilter.error_type``, the key of
the dead-letter groups, as the API's ``GET /api/jobs?state=failed&error_type=X`` and the
group actions filter. Without an index the first page walked the primary key newest first
until 51 failed jobs of that type turned up: on 10,000,000 rows (bench/README.md,
"web_reads: 10M rows") a rare type's page ran into the web reads' 5 s statement timeout.

``(coalesce(errors->-1->>'type', ''), id) WHERE state = 'failed'``: the expression is the
one every filtered statement in queries.sql writes, character for character in meaning
(the planner matches the parsed expression), so a type's failed jobs are one range in id
order: a first page reads 51 entries backward, and a group (task and type) is the
BitmapAnd of this range and ``pgq_jobs_dead_task_idx``'s. Partial on failed jobs: a job
takes one entry, when it fails for good, and none on the hot path.

Built in the migration's transaction like 0011 (blocks writes to pgq_jobs while it
reads the table: 1.5 s on the 10,000,000-row bench table, its 2.3 GB cached); an operator can build it
first with ``CREATE INDEX CONCURRENTLY`` under the same name and definition, and the
migration then skips it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("pgq_jobs_failed_type_idx", "pgq_jobs",
                    [sa.text("coalesce(errors->-1->>'type', '')"), "id"],
                    postgresql_where=sa.text("state = 'failed'"), if_not_exists=True)


def downgrade() -> None:
    op.drop_index("pgq_jobs_failed_type_idx", table_name="pgq_jobs")
