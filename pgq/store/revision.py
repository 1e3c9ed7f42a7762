"""The schema revision this pgq's SQL needs.

A constant, so that a worker checks the database's schema without importing Alembic and
SQLAlchemy (about 20 MiB of memory per worker process, and a quarter of a second at
start). ``tests/integration/test_migrations.py`` checks it against Alembic's head.
"""

SCHEMA_REVISION = "0012"
"""0009: ``pgq_jobs.notify_done``, so that only jobs someone waits for
(``app.jobs.result``) send ``NOTIFY pgq_done`` when they finish.
0010: ``pgq_api_keys`` and ``pgq_idempotency_keys`` (the HTTP API's keys and its
idempotent enqueues).
0011: partial indexes for the dashboard's job lists (queue of finished jobs, unique key,
dead jobs by task, tags, meta), so a rare filter's first page reads an index.
0012: failed jobs by their last error's type (the error_type filter of the dead-letter
groups and the API)."""
