"""Shared fixtures: one PostgreSQL server per test session, one freshly migrated database per module.

`pg_server` is the admin DSN of the server: DATABASE_URL when set (e.g. a server with TimescaleDB),
else an embedded PostgreSQL in a temporary directory, stopped at the end of the session.
`db_dsn` is a new database (unique name) upgraded to head, dropped WITH (FORCE) after the module.
Tests marked `timescale` are skipped unless that database took the TimescaleDB path.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from app import db

# dsn -> did the migration take the TimescaleDB path
_TIMESCALE: dict[str, bool] = {}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Admin DSN of the test PostgreSQL server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield db.plain_dsn(url)
        return
    # Not under pytest's tmp root: another pytest session on the machine prunes old numbered roots (and
    # chmods the root to 0700), which would pull the data directory from under the running server.
    base = Path(tempfile.mkdtemp(prefix="culturectl-test-pg-"))
    server = db.EmbeddedPostgres(base / "pgdata")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        dsn = server.start()
    try:
        yield dsn
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _db_name(request: pytest.FixtureRequest) -> str:
    module = request.module.__name__.rsplit(".", 1)[-1]
    slug = re.sub(r"[^a-z0-9_]", "_", module.lower())[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def db_dsn(pg_server: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """DSN of a new database migrated to head; dropped after the module."""
    name = _db_name(request)
    dsn = await db.create_database(pg_server, name)
    try:
        await db.upgrade_async(dsn)
        conn = await db.connect(dsn)
        try:
            _TIMESCALE[dsn] = await db.timescale_enabled(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        _TIMESCALE.pop(dsn, None)
        await db.drop_database(pg_server, name)


@pytest.fixture(autouse=True)
def _timescale_gate(request: pytest.FixtureRequest) -> None:
    """Skip `timescale` tests when the test database has no TimescaleDB (tested where it is installed)."""
    if request.node.get_closest_marker("timescale") is None:
        return
    dsn = request.getfixturevalue("db_dsn")
    if not _TIMESCALE.get(dsn, False):
        pytest.skip("no TimescaleDB on this PostgreSQL server (set DATABASE_URL to a server that has it)")
