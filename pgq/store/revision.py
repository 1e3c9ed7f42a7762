"""The schema revision this pgq's SQL needs.

A constant, so that a worker checks the database's schema without importing Alembic and
SQLAlchemy (about 20 MiB of memory per worker process, and a quarter of a second at
start). ``tests/integration/test_migrations.py`` checks it against Alembic's head.
"""

SCHEMA_REVISION = "0008"
