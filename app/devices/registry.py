"""Device and channel registry: the devices file mirrored into the device and channel tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.auth.principal import SYSTEM, Principal
from app.core.problems import Problem
from app.db import DBConnection
from app.records import audit
from drivers.devices import DeviceConfig

_DEVICE_FIELDS = ("name", "kind", "protocol", "endpoint", "description", "profile", "profile_version")

_UPSERT_DEVICE = """
INSERT INTO device (name, kind, protocol, endpoint, description, profile, profile_version)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (name) DO UPDATE
SET kind = EXCLUDED.kind, protocol = EXCLUDED.protocol,
    endpoint = EXCLUDED.endpoint, description = EXCLUDED.description,
    profile = EXCLUDED.profile, profile_version = EXCLUDED.profile_version
WHERE (device.kind, device.protocol, device.endpoint, device.description, device.profile, device.profile_version)
      IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.protocol, EXCLUDED.endpoint, EXCLUDED.description,
                        EXCLUDED.profile, EXCLUDED.profile_version)
"""

# Channels are never deleted here: telemetry of a point that left the profile keeps its channel row (and loses
# its role, which another point may now play). A channel keeps its id while its device keeps its name and point.
_CLEAR_ROLES = """
UPDATE channel SET role = NULL
WHERE device_id = $1 AND role IS NOT NULL
  AND (name <> ALL($2::text[]) OR role IS DISTINCT FROM ($3::text[])[array_position($2::text[], name)])
"""
_UPSERT_CHANNELS = """
INSERT INTO channel (device_id, name, unit, kind, role)
SELECT $1, p.name, p.unit, p.kind, p.role
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS p(name, unit, kind, role)
ON CONFLICT (device_id, name) DO UPDATE
SET unit = EXCLUDED.unit, kind = EXCLUDED.kind, role = EXCLUDED.role
WHERE (channel.unit, channel.kind, channel.role) IS DISTINCT FROM (EXCLUDED.unit, EXCLUDED.kind, EXCLUDED.role)
"""


def channel_key(device: str, point: str) -> str:
    """The channel key used in Readings: "<device>.<point>"."""
    return f"{device}.{point}"


_CHANNEL_STATE = "SELECT id, name, unit, kind, role FROM channel WHERE device_id = $1"


async def _audit_channel_changes(conn: DBConnection, actor: Principal, device_id: int,
                                 before: dict[str, Any]) -> None:
    """A channel whose unit, kind or role changed with the profile is audited (channel.update): its history before
    the change is in the old unit, and a reader of the record must be able to tell."""
    for r in await conn.fetch(_CHANNEL_STATE, device_id):
        old = before.get(r["name"])
        if old is None:
            continue
        fields = ("unit", "kind", "role")
        if any(old[f] != r[f] for f in fields):
            history = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM telemetry WHERE channel_id = $1)", r["id"])
            reason = "the device's profile changed" + (
                "; readings before this record are in the old unit" if old["unit"] != r["unit"] and history else "")
            await audit.record(conn, actor=actor, action="channel.update", entity_type="channel", entity_id=r["id"],
                               old={f: old[f] for f in fields}, new={f: r[f] for f in fields}, reason=reason)


def _device_record(row: Any) -> dict[str, Any]:
    return {f: row[f] for f in _DEVICE_FIELDS}


async def sync_devices(
    conn: DBConnection, devices: Sequence[DeviceConfig], *, actor: Principal = SYSTEM
) -> dict[str, int]:
    """Upsert each device and one channel per point of its map; return channel key -> channel id.

    Idempotent: running it again with the same devices changes no row (updates only rows that differ).
    A new or changed device is audited (device.register / device.update) in the same transaction.
    """
    async with conn.transaction():
        for dev in devices:
            old = await conn.fetchrow(f"SELECT id, {', '.join(_DEVICE_FIELDS)} FROM device WHERE name = $1",
                                      dev.name)
            await conn.execute(
                _UPSERT_DEVICE, dev.name, dev.kind, dev.protocol, dev.endpoint, dev.description,
                dev.profile_spec.name, dev.profile_spec.version,
            )
            new = await conn.fetchrow(f"SELECT id, {', '.join(_DEVICE_FIELDS)} FROM device WHERE name = $1",
                                      dev.name)
            assert new is not None
            device_id = new["id"]
            if old is None:
                await audit.record(conn, actor=actor, action="device.register", entity_type="device",
                                   entity_id=device_id, old=None, new=_device_record(new), reason=None)
            elif _device_record(old) != _device_record(new):
                await audit.record(conn, actor=actor, action="device.update", entity_type="device",
                                   entity_id=device_id, old=_device_record(old), new=_device_record(new),
                                   reason="the devices file changed")
            points = dev.points
            names, roles = [p.name for p in points], [p.role for p in points]
            before = {r["name"]: r for r in await conn.fetch(_CHANNEL_STATE, device_id)}
            await conn.execute(_CLEAR_ROLES, device_id, names, roles)
            await conn.execute(_UPSERT_CHANNELS, device_id, names, [p.unit for p in points],
                               [p.kind for p in points], roles)
            await _audit_channel_changes(conn, actor, device_id, before)
        names = [d.name for d in devices]
        rows = await conn.fetch(
            "SELECT d.name AS device, c.name AS point, c.id "
            "FROM channel c JOIN device d ON d.id = c.device_id WHERE d.name = ANY($1::text[])",
            names,
        )
    wanted = {channel_key(d.name, p.name) for d in devices for p in d.points}
    return {
        key: int(r["id"]) for r in rows if (key := channel_key(r["device"], r["point"])) in wanted
    }


async def channel_ids(conn: DBConnection) -> dict[str, int]:
    """Every known channel key -> id (including channels whose point left the map)."""
    rows = await conn.fetch(
        "SELECT d.name AS device, c.name AS point, c.id FROM channel c JOIN device d ON d.id = c.device_id"
    )
    return {channel_key(r["device"], r["point"]): int(r["id"]) for r in rows}


async def device_id(conn: DBConnection, name: str | None, kind: str) -> int | None:
    """The id of registered device `name` of `kind` (None for None); 422 naming the devices of that kind."""
    if name is None:
        return None
    row = await conn.fetchrow("SELECT id, kind FROM device WHERE name = $1", name)
    if row is None or row["kind"] != kind:
        known = [r["name"] for r in await conn.fetch("SELECT name FROM device WHERE kind = $1 ORDER BY name", kind)]
        raise Problem(422, "unknown-device", "Unknown device",
                      f"{name!r} is not a registered {kind} device; known: {', '.join(known) or 'none'}",
                      rule="unknown_device")
    return int(row["id"])


_CHANNELS = ("SELECT c.id, d.name AS device, c.name, c.unit, c.kind, c.role, d.kind AS device_class "
             "FROM channel c JOIN device d ON d.id = c.device_id")


async def channels(conn: DBConnection) -> list[Any]:
    """Every channel (id, device, name, unit, kind, role, device_class), by device and id."""
    return list(await conn.fetch(_CHANNELS + " ORDER BY d.name, c.id"))


async def channel(conn: DBConnection, channel_id: int) -> Any | None:
    return await conn.fetchrow(_CHANNELS + " WHERE c.id = $1", channel_id)


async def channel_units_and_roles(conn: DBConnection) -> tuple[dict[str, str], dict[str, str]]:
    """In one query: channel key ("<device>.<point>") -> unit, and "<device>.<role>" -> the channel key of the
    point playing it."""
    rows = await channels(conn)
    units = {channel_key(r["device"], r["name"]): r["unit"] for r in rows}
    roles = {f"{r['device']}.{r['role']}": channel_key(r["device"], r["name"]) for r in rows if r["role"] is not None}
    return units, roles


async def device_roles(conn: DBConnection, device_id: int) -> frozenset[str]:
    """The roles the points of a registered device play."""
    rows = await conn.fetch("SELECT role FROM channel WHERE device_id = $1 AND role IS NOT NULL", device_id)
    return frozenset(str(r["role"]) for r in rows)
