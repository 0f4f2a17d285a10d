"""Alembic environment: runs in process on the connection ``mirror.store.migrate`` hands over."""

from alembic import context

from mirror.store.models import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
