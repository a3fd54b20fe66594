"""Fixtures of the database tests."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app import db
from tests.support import OwnServer


@pytest.fixture(scope="module")
async def own_pg() -> AsyncIterator[OwnServer]:
    """A PostgreSQL of the module's own, migrated to head, that its tests stop and start (outages).

    Not under pytest's tmp root: a concurrent pytest session chmods that root to 0700, and the server (running as
    another user when we are root) could then no longer reach its data."""
    base = Path(tempfile.mkdtemp(prefix="culturectl-own-pg-"))
    own = OwnServer(base / "pgdata")
    try:
        dsn = await own.start()
        await db.upgrade_async(dsn)
        yield own
    finally:
        await own.stop()
        await asyncio.to_thread(shutil.rmtree, base, True)
