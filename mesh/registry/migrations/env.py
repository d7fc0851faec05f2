"""Alembic environment for the registry's schema.

``mesh.registry.store.migrate`` hands over an open connection (``config.attributes["connection"]``);
run from the ``alembic`` command instead, it connects to ``sqlalchemy.url`` or ``MESH_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from mesh.registry.store import DATABASE_URL_VARIABLE, Base, connect

config = context.config


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    )
    with context.begin_transaction():
        context.run_migrations()


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get(DATABASE_URL_VARIABLE)
    if not url:
        raise SystemExit(f"no database: set sqlalchemy.url or {DATABASE_URL_VARIABLE}")
    engine = connect(url)
    try:
        with engine.begin() as connection:
            run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the registry's migrations run online only (mesh migrates its database itself)")
run()
