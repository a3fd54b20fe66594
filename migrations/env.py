"""Alembic environment: async (asyncpg through SQLAlchemy), URL from the config or CULTURECTL_DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.db import engine_creator, sqlalchemy_url

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name)

# No ORM metadata: revisions are written by hand (the schema is partly TimescaleDB-specific).
target_metadata = None


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        env = os.environ.get("CULTURECTL_DATABASE_URL")
        if not env:
            raise RuntimeError("no database URL: set CULTURECTL_DATABASE_URL or sqlalchemy.url")
        url = env
    return sqlalchemy_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _do_run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    # Connect through the service's own connect: a multi-host DSN reaches the host target_session_attrs asks for
    # (read-write: the primary), each host tried in turn with its own timeout.
    url = _url()
    engine = create_async_engine(url, poolclass=pool.NullPool, async_creator=engine_creator(url))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_do_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
