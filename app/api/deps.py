"""Dependency aliases shared by the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
from fastapi import Depends, Path, Query, Request

from app.core.problems import Problem
from app.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_connection(runtime: RuntimeDep) -> AsyncIterator[asyncpg.Connection]:
    if runtime.pool is None:
        raise Problem(503, "database-unavailable", "Database unavailable", "the service is still starting")
    try:
        conn = await runtime.pool.acquire(timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise Problem(503, "database-unavailable", "Database unavailable",
                      f"the history database cannot be reached now ({type(exc).__name__}); live data "
                      "keeps flowing and is stored when it returns") from exc
    try:
        yield conn
    finally:
        await runtime.pool.release(conn)


ConnectionDep = Annotated[asyncpg.Connection, Depends(get_connection)]


# Ids as the schema states them: a value the database column cannot hold is a 422 naming the range, not a 500.
INT32_MAX = 2_147_483_647
INT64_MAX = 9_223_372_036_854_775_807
SmallId = Annotated[int, Path(ge=1, le=INT32_MAX, description="an id (int4)")]
RecordId = Annotated[int, Path(ge=1, le=INT64_MAX, description="an id (int8)")]
RecordIdQuery = Annotated[int | None, Query(ge=1, le=INT64_MAX, description="an id (int8)")]
