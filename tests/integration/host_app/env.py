"""A host app's Alembic env.py that also runs pgq's migrations, as docs/migrations.md shows."""

from alembic import context
from sqlalchemy import Column, Integer, MetaData, Table, create_engine
from sqlalchemy.pool import NullPool

from pgq.store.migrate import exclude_pgq_objects, upgrade

host_metadata = MetaData()
Table("users", host_metadata, Column("id", Integer, primary_key=True))
engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=NullPool)

with engine.connect() as connection:
    upgrade(connection)  # pgq's own history, in pgq's own version table
    context.configure(connection=connection, target_metadata=host_metadata,
                      include_object=exclude_pgq_objects)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
