"""The lease and replica tables (owner: this module). Every expiry is the database's clock.

A lease row per device (`device:<name>`) and one `leader`. Claiming takes a lease that is free (no holder) or
expired and raises its epoch, the fencing token; renewing extends the leases a replica still holds. A lease whose
holder is unchanged has not been held by anyone else meanwhile, so a replica that could not renew in time (the
database was down for everyone) renews it again when the database is back, with the same epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from app.cluster.share import LeaseView
from app.db import DBConnection


@dataclass(frozen=True, slots=True)
class Replica:
    id: str
    url: str
    started_at: datetime
    seen_at: datetime
    stopping: bool
    live: bool


@dataclass(frozen=True, slots=True)
class LeaseRow:
    name: str
    holder: str | None
    epoch: int
    expires_at: datetime | None
    acquired_at: datetime | None
    expired: bool
    state: str | None = None  # a device's connection state as its holder last said, and since when
    state_since: datetime | None = None

    def view(self) -> LeaseView:
        return LeaseView(self.holder, self.expired)


async def ensure(conn: DBConnection, names: Iterable[str]) -> None:
    """A row for each lease (nobody holds a new one)."""
    await conn.execute("INSERT INTO cluster_lease (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
                       sorted(set(names)))


async def heartbeat(conn: DBConnection, me: str, url: str, *, stopping: bool = False) -> None:
    await conn.execute(
        "INSERT INTO cluster_replica (id, url, started_at, seen_at, stopping) VALUES ($1, $2, now(), now(), $3) "
        "ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, seen_at = now(), stopping = EXCLUDED.stopping, "
        "started_at = CASE WHEN cluster_replica.stopping THEN now() ELSE cluster_replica.started_at END",
        me, url, stopping)


async def renew(conn: DBConnection, me: str, ttl_s: float) -> dict[str, int]:
    """Extend every lease `me` still holds (expired or not: nobody else has held it since); name -> epoch."""
    rows = await conn.fetch(
        "UPDATE cluster_lease SET expires_at = now() + make_interval(secs => $2), renewed_at = now() "
        "WHERE holder = $1 RETURNING name, epoch", me, ttl_s)
    return {str(r["name"]): int(r["epoch"]) for r in rows}


async def claim(conn: DBConnection, me: str, name: str, ttl_s: float) -> int | None:
    """Take a free or expired lease; its new epoch, or None when someone else holds it."""
    epoch = await conn.fetchval(
        "UPDATE cluster_lease SET holder = $2, epoch = epoch + 1, expires_at = now() + make_interval(secs => $3), "
        "acquired_at = now(), renewed_at = now() "
        "WHERE name = $1 AND (holder IS NULL OR holder = $2 OR expires_at <= now()) RETURNING epoch",
        name, me, ttl_s)
    return int(epoch) if epoch is not None else None


async def release(conn: DBConnection, me: str, names: Sequence[str]) -> list[str]:
    """Hand leases over now (the epoch stays: the next holder raises it); the names released."""
    rows = await conn.fetch(
        "UPDATE cluster_lease SET holder = NULL, expires_at = NULL WHERE holder = $1 AND name = ANY($2::text[]) "
        "RETURNING name", me, list(names))
    return [str(r["name"]) for r in rows]


async def release_all(conn: DBConnection, me: str) -> list[str]:
    """Hand over every lease held under `me` (SIGTERM), whatever this process knew of them."""
    rows = await conn.fetch("UPDATE cluster_lease SET holder = NULL, expires_at = NULL WHERE holder = $1 "
                            "RETURNING name", me)
    return [str(r["name"]) for r in rows]


async def leases(conn: DBConnection) -> list[LeaseRow]:
    rows = await conn.fetch(
        "SELECT name, holder, epoch, expires_at, acquired_at, state, state_since, "
        "coalesce(expires_at <= now(), false) AS expired FROM cluster_lease ORDER BY name")
    return [LeaseRow(str(r["name"]), r["holder"], int(r["epoch"]), r["expires_at"], r["acquired_at"],
                     bool(r["expired"]), r["state"], r["state_since"]) for r in rows]


async def report_states(conn: DBConnection, me: str, states: Mapping[str, tuple[str, datetime | None]]) -> None:
    """Write the connection state of the devices `me` holds (lease name -> (state, since)) where it changed."""
    if not states:
        return
    names = list(states)
    await conn.execute(
        "UPDATE cluster_lease l SET state = s.state, state_since = s.since "
        "FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS s(name, state, since) "
        "WHERE l.name = s.name AND l.holder = $1 "
        "AND (l.state IS DISTINCT FROM s.state OR l.state_since IS DISTINCT FROM s.since)",
        me, names, [states[n][0] for n in names], [states[n][1] for n in names])


async def replicas(conn: DBConnection, ttl_s: float) -> list[Replica]:
    rows = await conn.fetch(
        "SELECT id, url, started_at, seen_at, stopping, "
        "(NOT stopping AND seen_at > now() - make_interval(secs => $1)) AS live FROM cluster_replica ORDER BY id",
        ttl_s)
    return [Replica(str(r["id"]), str(r["url"]), r["started_at"], r["seen_at"], bool(r["stopping"]),
                    bool(r["live"])) for r in rows]


async def holds(conn: DBConnection, name: str, me: str, epoch: int) -> bool:
    """Whether `me` still holds lease `name` at `epoch` (FOR SHARE: no one can claim it before the caller's
    transaction ends)."""
    found = await conn.fetchval(
        "SELECT true FROM cluster_lease WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now() "
        "FOR SHARE", name, me, epoch)
    return bool(found)
