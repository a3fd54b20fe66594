"""Queries built from filters and paging: SQLAlchemy Core statements over app/db/schema.py, run on asyncpg.

Decision: the data model is written once as Core metadata; a query whose WHERE clause depends on which filters a
caller gave is built from it (no string assembly, no `($1 IS NULL OR ...)` chains), compiled for asyncpg and
executed on the connection the caller already holds. The hot paths (COPY, the rollup upsert, the latest values)
stay hand-written SQL in the module that owns the table, where that is faster.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import dialect as _asyncpg_dialect
from sqlalchemy.sql import ClauseElement

from app.db.connect import DBConnection

_DIALECT = _asyncpg_dialect()  # type: ignore[no-untyped-call]


def compile_statement(stmt: ClauseElement) -> tuple[str, list[Any]]:
    """The SQL text with $n placeholders and its arguments in order."""
    compiled = stmt.compile(dialect=_DIALECT)
    params = compiled.params
    order = getattr(compiled, "positiontup", None) or ()  # the $n order of the asyncpg dialect
    return str(compiled), [params[name] for name in order]


async def fetch(conn: DBConnection, stmt: ClauseElement) -> list[asyncpg.Record]:
    sql, args = compile_statement(stmt)
    return list(await conn.fetch(sql, *args))
