"""What every command group of `culturectl` shares: logging, settings from options, the configured database."""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import typer

from app import db
from app.core.problems import Problem
from app.settings import Settings

T = TypeVar("T")


def configure_logging(level: str) -> None:
    from app.runtime import quiet_library_loggers  # the service's modules load only for commands that need them

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    quiet_library_loggers()


def settings_with(**overrides: object) -> Settings:
    """Environment settings with the command-line options that were given on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


def with_database(action: Callable[[str], T]) -> T:
    """Call `action` with the configured database's DSN: CULTURECTL_DATABASE_URL, or the embedded server in
    CULTURECTL_DATA_DIR, started for the command and stopped after it."""
    settings = Settings()
    configure_logging(settings.log_level)
    dsn = settings.database_dsn()
    embedded = None
    if dsn is None:
        embedded = db.EmbeddedPostgres(Path(settings.data_dir) / "pg")
        dsn = embedded.start()
    try:
        return action(dsn)
    finally:
        if embedded is not None:
            embedded.stop()


def run_on_database(action: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `action` on a connection to the configured database; a Problem becomes an error message, exit 1."""

    async def main(dsn: str) -> T:
        conn = await db.connect(dsn)
        try:
            if not await conn.fetchval("SELECT to_regclass('users') IS NOT NULL"):
                raise Problem(500, "not-migrated", "Database not migrated",
                              "the database has no accounts yet: run `culturectl db upgrade` first")
            return await action(conn)
        finally:
            await conn.close()

    try:
        return with_database(lambda dsn: asyncio.run(main(dsn)))
    except Problem as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(1) from None


def read_password(password_stdin: bool, confirm: bool = True) -> str:
    """The first line of stdin, or a password typed twice at the prompt."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Repeat the password: ") != password:
        typer.echo("error: the two passwords differ", err=True)
        raise typer.Exit(1)
    return password
