"""The migrations runner (Alembic): upgrade, downgrade, the current revision, and which schema path was taken.

`upgrade`/`downgrade`/`current_revision` are synchronous (Alembic's API is, and the async env.py runs its own
event loop with `asyncio.run`). From async code call `upgrade_async`/`downgrade_async`, which run them in a worker
thread so the caller's loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

from app.db.connect import DBConnection, redact, sqlalchemy_url

log = logging.getLogger("culturectl.db")

MIGRATIONS_PACKAGE = "migrations"




def migrations_location() -> str:
    """Directory of the Alembic scripts, found through the installed `migrations` package."""
    return str(resources.files(MIGRATIONS_PACKAGE))


def alembic_config(dsn: str) -> Any:
    """An Alembic Config built in code (no ini file needed), pointing at the packaged migrations."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_location())
    # ConfigParser interpolation treats % specially; socket paths arrive %2F-encoded.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    cfg.attributes["configure_logging"] = False  # the service owns logging
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    """Upgrade the database to `revision` (blocking; never call from a running event loop's thread)."""
    from alembic import command

    log.info("upgrading %s to %s", redact(dsn), revision)
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    """Downgrade the database to `revision` ("base" removes everything the migrations made); blocking."""
    from alembic import command

    log.info("downgrading %s to %s", redact(dsn), revision)
    command.downgrade(alembic_config(dsn), revision)


async def upgrade_async(dsn: str, revision: str = "head") -> None:
    """`upgrade` in a worker thread."""
    await asyncio.to_thread(upgrade, dsn, revision)


async def downgrade_async(dsn: str, revision: str) -> None:
    """`downgrade` in a worker thread."""
    await asyncio.to_thread(downgrade, dsn, revision)


async def current_revision(conn: DBConnection) -> str | None:
    """The Alembic revision the database is at, None when it was never migrated."""
    exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
    if not exists:
        return None
    rev = await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")
    return str(rev) if rev is not None else None


async def timescale_enabled(conn: DBConnection) -> bool:
    """True when the migration took the TimescaleDB path (read from schema_info, never guessed)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_info') IS NOT NULL")
    if not exists:
        return False
    value = await conn.fetchval("SELECT value FROM schema_info WHERE key = 'timescale'")
    return bool(value == "true")
