"""Device registry: devices file -> device and channel rows, idempotently."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from app import db
from app.devices.registry import channel_ids, sync_devices
from drivers.devices import DeviceConfig, load_devices
from drivers.points import CULTURE_SYSTEM_POINTS, INCUBATOR_POINTS


@pytest.fixture(scope="module")
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await db.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


async def _snapshot(conn: asyncpg.Connection) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    devices = await conn.fetch(
        "SELECT id, name, kind, protocol, endpoint, description, xmin::text FROM device ORDER BY id"
    )
    channels = await conn.fetch("SELECT id, device_id, name, unit, kind, xmin::text FROM channel ORDER BY id")
    return [tuple(r) for r in devices], [tuple(r) for r in channels]


async def test_sync_default_devices_is_idempotent(conn: asyncpg.Connection) -> None:
    devices = load_devices()
    ids = await sync_devices(conn, devices)
    expected = {f"incubator-1.{p.name}" for p in INCUBATOR_POINTS} | {
        f"culture-system-1.{p.name}" for p in CULTURE_SYSTEM_POINTS
    }
    assert set(ids) == expected
    assert len(set(ids.values())) == len(ids)  # one channel per point

    before = await _snapshot(conn)
    again = await sync_devices(conn, devices)
    assert again == ids
    # not even rewritten: xmin (the writing transaction) is unchanged
    assert await _snapshot(conn) == before

    kinds = dict(await conn.fetch("SELECT name, kind FROM channel WHERE name IN ('door_open', 'co2')"))
    assert kinds == {"door_open": "boolean", "co2": "analog"}
    assert await channel_ids(conn) == ids


async def test_changed_endpoint_updates_in_place(conn: asyncpg.Connection) -> None:
    first = DeviceConfig(name="cs-moved", kind="culture-system", protocol="modbus", endpoint="modbus://127.0.0.1:5021")
    ids = await sync_devices(conn, [first])
    moved = first.model_copy(update={"endpoint": "modbus://127.0.0.1:5099", "description": "bay 9"})
    assert await sync_devices(conn, [moved]) == ids  # same channel ids: history stays attached
    row = await conn.fetchrow("SELECT endpoint, description FROM device WHERE name = 'cs-moved'")
    assert tuple(row) == ("modbus://127.0.0.1:5099", "bay 9")
    assert await conn.fetchval("SELECT count(*) FROM device WHERE name = 'cs-moved'") == 1


async def test_only_requested_devices_returned(conn: asyncpg.Connection) -> None:
    one = DeviceConfig(name="inc-only", kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:1/x")
    ids = await sync_devices(conn, [one])
    assert ids and all(k.startswith("inc-only.") for k in ids)
    assert await sync_devices(conn, []) == {}


async def test_device_registration_and_changes_are_audited(conn: asyncpg.Connection) -> None:
    async def audit_rows() -> list[asyncpg.Record]:
        return await conn.fetch("SELECT action, entity_id, old, new, reason, actor_name FROM audit_log "
                                "WHERE entity_type = 'device' ORDER BY seq")

    base = DeviceConfig(name="audited-incubator", kind="incubator", protocol="opcua",
                        endpoint="opc.tcp://127.0.0.1:4999/culturectl/incubator")
    before = len(await audit_rows())
    await sync_devices(conn, [base])
    await sync_devices(conn, [base])  # unchanged: nothing to audit
    rows = (await audit_rows())[before:]
    assert [r["action"] for r in rows] == ["device.register"]
    assert rows[0]["actor_name"] == "culturectl" and '"audited-incubator"' in rows[0]["new"]

    moved = base.model_copy(update={"endpoint": "opc.tcp://127.0.0.1:5999/culturectl/incubator"})
    await sync_devices(conn, [moved])
    rows = (await audit_rows())[before:]
    assert [r["action"] for r in rows] == ["device.register", "device.update"]
    assert "4999" in rows[1]["old"] and "5999" in rows[1]["new"] and rows[1]["reason"]


async def test_a_profile_change_of_a_channels_unit_or_role_is_audited(conn: asyncpg.Connection) -> None:
    import yaml

    from drivers.devices import parse_devices
    from drivers.profiles import shipped_library

    def device(unit: str, role: str | None) -> DeviceConfig:
        prof = shipped_library().get("culturectl-sim-incubator").model_dump(mode="json", by_alias=True)
        prof["name"], prof["points"][0]["unit"], prof["points"][0]["role"] = "site-incubator", unit, role
        return parse_devices(yaml.safe_dump({"devices": [{"name": "unit-change", "profile": prof,
                                                          "endpoint": "opc.tcp://127.0.0.1:1/x"}]}))[0]

    ids = await sync_devices(conn, [device("degC", "temperature")])
    temp = ids["unit-change.temperature"]
    await conn.execute("INSERT INTO telemetry (channel_id, time, value, quality) VALUES ($1, now(), 37.0, 0)", temp)
    await sync_devices(conn, [device("degF", None)])  # no role: stored in the device's unit from now on
    rows = await conn.fetch("SELECT old, new, reason FROM audit_log WHERE action = 'channel.update' AND "
                            "entity_id = $1", str(temp))
    assert len(rows) == 1
    assert '"degC"' in rows[0]["old"] and '"degF"' in rows[0]["new"] and '"temperature"' in rows[0]["old"]
    assert "readings before this record are in the old unit" in rows[0]["reason"]
    await sync_devices(conn, [device("degF", None)])  # unchanged: nothing more
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'channel.update' AND entity_id = $1",
                               str(temp)) == 1
