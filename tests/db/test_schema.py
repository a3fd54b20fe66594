"""The data model in app/db/schema.py and the migrations agree: a database migrated to head has exactly the tables,
columns, types, nullability, keys, indexes and foreign keys the metadata declares (Alembic's compare), so a migration
that drifts from the model, or a model that drifts from the migrations, fails here."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from app import db
from app.db.schema import metadata

# What TimescaleDB makes different by design: the rollup is a continuous aggregate (a view), the hypertable has
# no BRIN index.
TIMESCALE_ONLY = {"telemetry_5m", "telemetry_time_brin"}


async def _diff(dsn: str) -> list[Any]:
    conn = await db.connect(dsn)
    try:
        timescale = await db.timescale_enabled(conn)
    finally:
        await conn.close()

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        return not (timescale and name in TIMESCALE_ONLY)

    def compare(sync: Connection) -> list[Any]:
        ctx = MigrationContext.configure(sync, opts={"compare_type": True, "include_object": include})
        return list(compare_metadata(ctx, metadata))

    engine = db.create_engine(dsn)
    try:
        async with engine.connect() as aconn:
            return await aconn.run_sync(compare)
    finally:
        await engine.dispose()


async def test_a_database_migrated_to_head_matches_the_model(db_dsn: str) -> None:
    assert await _diff(db_dsn) == []


async def test_a_drifting_migration_is_caught(db_dsn: str) -> None:
    conn = await db.connect(db_dsn)
    try:
        await conn.execute("CREATE TABLE drift_probe (id int PRIMARY KEY)")
        await conn.execute("ALTER TABLE deviation ADD COLUMN drift_probe text")
        diff = await _diff(db_dsn)
    finally:
        await conn.execute("ALTER TABLE deviation DROP COLUMN drift_probe")
        await conn.execute("DROP TABLE drift_probe")
        await conn.close()
    kinds = {(d[0], getattr(d[-1], "name", None) if d[0] == "remove_column" else None) for d in diff}
    assert ("remove_table", None) in kinds and ("remove_column", "drift_probe") in kinds
