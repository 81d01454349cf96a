"""Alembic environment: byoi passes an open connection in `config.attributes["connection"]`."""

import importlib
import pkgutil

from alembic import context

import byoi.store
from byoi.store.schema import metadata

# Every `byoi.store.schema_<area>` module adds its tables to the one metadata.
for module in pkgutil.iter_modules(byoi.store.__path__):
    if module.name.startswith("schema_"):
        importlib.import_module(f"byoi.store.{module.name}")

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` run by a developer
    import sqlalchemy as sa

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set sqlalchemy.url to the database to compare the schema with")
    engine = sa.create_engine(url)
    connection = engine.connect()

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
