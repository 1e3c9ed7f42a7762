"""Alembic environment for running pgq's migrations with the ``alembic`` command
(``alembic upgrade head``, ``alembic check``) from a checkout.

``pgq migrate`` does not go through this file: it drives the same revisions from
``pgq.migrate``. Both use pgq's own version table, so pgq's history never touches a
host application's ``alembic_version``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from pgq.core.settings import Settings
from pgq.store.migrate import VERSION_TABLE, include_pgq_objects
from pgq.store.schema import metadata

config = context.config
opts = {
    "target_metadata": metadata,
    "version_table": VERSION_TABLE,
    "include_object": include_pgq_objects,
    "compare_type": True,
}

if context.is_offline_mode():
    context.configure(dialect_name="postgresql", literal_binds=True, **opts)
    with context.begin_transaction():
        context.run_migrations()
else:
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().sqlalchemy_url
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, **opts)
        with context.begin_transaction():
            context.run_migrations()
