"""The notification outbox: episodes, planned notices, deliveries and attempts. The one module that writes them.

The alarm service hands `Start` and `End` work to `apply` in the same transaction as the alarm transition that
caused it (or later from the disk spool, in order, while the database was down): an episode and every alert it
plans (each tier and repeat with its due time), or the end of the open episode (its pending alerts cancelled, an
acknowledgement or return notice added if the rule asks). At most one episode per alarm is open (a unique index),
so a second replica that saw the same activation adds nothing.

The sender (app/notify/sender.py) takes due notices with `FOR UPDATE SKIP LOCKED` and expands each into one
delivery per contact point; it claims due deliveries with a lease, sends them, and records every attempt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from app.db import DBConnection
from app.notify.rules import EpisodeEnd, Planned

_RANK = {"advisory": 0, "low": 1, "medium": 2, "high": 3}


@dataclass(frozen=True, slots=True)
class Start:
    """An episode starts: the alerts its rule plans."""

    alarm_id: str
    at: datetime
    priority: str
    rule: str
    policy_version: int
    summary: str
    alerts: tuple[Planned, ...]
    key: str  # makes a replay from the spool idempotent


@dataclass(frozen=True, slots=True)
class End:
    """The open episode of an alarm ends (an acknowledgement or return notice is planned; the sender sends it if the
    episode's rule asks for it)."""

    alarm_id: str
    at: datetime
    end: EpisodeEnd
    reason: str


Work = Start | End


def pack(w: Work) -> str:
    """Work as the JSON text a spooled record keeps."""
    if isinstance(w, Start):
        return json.dumps({"start": {
            "alarm_id": w.alarm_id, "at": w.at.isoformat(), "priority": w.priority, "rule": w.rule,
            "policy_version": w.policy_version, "summary": w.summary, "key": w.key,
            "alerts": [[p.tier, p.repeat, p.due_at.isoformat()] for p in w.alerts]}})
    return json.dumps({"end": {"alarm_id": w.alarm_id, "at": w.at.isoformat(), "end": w.end, "reason": w.reason}})


def unpack(text: str) -> Work:
    d = json.loads(text)
    if "start" in d:
        s = d["start"]
        return Start(s["alarm_id"], datetime.fromisoformat(s["at"]), s["priority"], s["rule"],
                     int(s["policy_version"]), s["summary"],
                     tuple(Planned(int(t), int(r), datetime.fromisoformat(due)) for t, r, due in s["alerts"]),
                     s["key"])
    e = d["end"]
    return End(e["alarm_id"], datetime.fromisoformat(e["at"]), e["end"], e["reason"])


async def apply(conn: asyncpg.Connection, w: Work) -> None:
    """Write one piece of work in the caller's transaction.

    Work that comes late (replayed from the spool, or flushed by a replica after another one acted) never undoes
    what happened after it: a Start older than an episode that started or ended since is dropped (the alarm was
    acknowledged meanwhile), and an End closes only an episode that started before it.
    """
    if isinstance(w, End):
        await _end(conn, w.alarm_id, w.at, w.reason, w.end if w.end != "mode" else None)
        return
    later = await conn.fetchval("SELECT 1 FROM notification_episode WHERE alarm_id = $1 AND (started_at > $2 OR "
                                "closed_at >= $2) LIMIT 1", w.alarm_id, w.at)
    if later is not None:
        return
    open_ = await conn.fetchrow("SELECT id, priority FROM notification_episode WHERE alarm_id = $1 AND "
                                "closed_at IS NULL FOR UPDATE", w.alarm_id)
    if open_ is not None:
        if _RANK.get(w.priority, 0) <= _RANK.get(str(open_["priority"]), 0):
            return  # already notifying (another replica saw the same activation, or an escalation within it)
        await _end(conn, w.alarm_id, w.at, f"escalated to priority {w.priority}", None)
    episode = await conn.fetchval(
        "INSERT INTO notification_episode (alarm_id, started_at, priority, rule, policy_version, summary, "
        "record_key) VALUES ($1, $2, $3, $4, $5, $6, $7::uuid) ON CONFLICT DO NOTHING RETURNING id",
        w.alarm_id, w.at, w.priority, w.rule, w.policy_version, w.summary, w.key)
    if episode is None:
        return  # replayed from the spool after its commit, or opened meanwhile by another replica
    await conn.executemany(
        "INSERT INTO notification (episode_id, alarm_id, kind, tier, repeat, due_at, status, created_at) VALUES "
        "($1, $2, 'alert', $3, $4, $5, 'pending', $6) ON CONFLICT DO NOTHING",
        [(episode, w.alarm_id, p.tier, p.repeat, p.due_at, w.at) for p in w.alerts])


async def _end(conn: asyncpg.Connection, alarm_id: str, at: datetime, reason: str,
               notice: EpisodeEnd | None) -> None:
    episode = await conn.fetchval("UPDATE notification_episode SET closed_at = $2, closed_reason = $3 WHERE "
                                  "alarm_id = $1 AND closed_at IS NULL AND started_at <= $2 RETURNING id", alarm_id,
                                  at, reason)
    if episode is None:
        return
    await conn.execute("UPDATE notification SET status = 'cancelled', detail = $3, settled_at = $2 WHERE "
                       "episode_id = $1 AND status = 'pending'", episode, at, f"cancelled: {reason}")
    # Deliveries not sent yet stop too; one being sent right now ends as what it is (sent, or cancelled).
    await conn.execute("UPDATE notification_delivery d SET status = 'cancelled', last_error = $2 FROM notification n "
                       "WHERE n.id = d.notification_id AND n.episode_id = $1 AND d.status = 'pending'", episode,
                       f"cancelled: {reason}")
    if notice is not None:
        await conn.execute(
            "INSERT INTO notification (episode_id, alarm_id, kind, tier, repeat, due_at, status, created_at) VALUES "
            "($1, $2, $3, 0, 0, $4, 'pending', $4) ON CONFLICT DO NOTHING", episode, alarm_id, notice, at)


# -- the sender's side ---------------------------------------------------------------------------------------------

DUE_COLUMNS = ("n.id, n.episode_id, n.alarm_id, n.kind, n.tier, n.repeat, n.due_at, e.rule, e.policy_version, "
               "e.priority, e.summary, e.started_at")


async def take_due(conn: asyncpg.Connection, now: datetime, limit: int = 50) -> list[asyncpg.Record]:
    """Due notices, locked for the caller's transaction; those another sender holds are skipped."""
    return list(await conn.fetch(
        f"SELECT {DUE_COLUMNS} FROM notification n JOIN notification_episode e ON e.id = n.episode_id "
        f"WHERE n.status = 'pending' AND n.due_at <= $1 ORDER BY n.due_at, n.id LIMIT $2 FOR UPDATE OF n SKIP LOCKED",
        now, limit))


async def supersede(conn: asyncpg.Connection, notification_id: int, at: datetime, detail: str) -> None:
    """Settle an overdue alert that a later repeat of its tier replaces (one notice, not a burst, after an outage)."""
    await conn.execute("UPDATE notification SET status = 'cancelled', detail = $2, settled_at = $3 WHERE id = $1",
                       notification_id, detail, at)


@dataclass(frozen=True, slots=True)
class Target:
    """One contact point a notice goes to; `token_hash`: its acknowledgement link's hash, for alerts."""

    contact_point_id: int
    username: str
    channel: str
    token_hash: str | None = None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def expand(conn: asyncpg.Connection, notification_id: int, targets: Sequence[Target], at: datetime,
                 link_expires: datetime | None, detail: str) -> int:
    """Turn a due notice into one delivery per contact point (in the caller's transaction); deliveries made."""
    made = 0
    for t in targets:
        made += int(await conn.fetchval(
            "WITH d AS (INSERT INTO notification_delivery (notification_id, contact_point_id, username, channel, "
            "status, next_attempt_at, ack_token_hash, ack_expires_at, created_at) VALUES ($1, $2, $3, $4, 'pending', "
            "$5, $6, $7, $5) ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM d", notification_id,
            t.contact_point_id, t.username, t.channel, at, t.token_hash,
            link_expires if t.token_hash is not None else None))
    await conn.execute("UPDATE notification SET status = 'expanded', detail = $2, settled_at = $3 WHERE id = $1",
                       notification_id, detail, at)
    return made


async def notified(conn: DBConnection, episode_id: int) -> list[tuple[int, str, str]]:
    """(contact point, user, channel) an alert of the episode reached: who hears of its acknowledgement or return."""
    rows = await conn.fetch(
        "SELECT DISTINCT d.contact_point_id, d.username, d.channel FROM notification_delivery d JOIN notification n "
        "ON n.id = d.notification_id WHERE n.episode_id = $1 AND n.kind = 'alert' AND d.status = 'sent' "
        "ORDER BY d.username, d.contact_point_id", episode_id)
    return [(int(r["contact_point_id"]), str(r["username"]), str(r["channel"])) for r in rows]


CLAIM_COLUMNS = (
    "d.id, d.notification_id, d.contact_point_id, d.username, d.channel, d.attempts, d.status, d.created_at, "
    "d.ack_expires_at, n.kind, n.tier, n.repeat, n.alarm_id, n.episode_id, e.priority, e.summary, e.started_at, "
    "e.rule, c.kind AS contact_kind, c.address, c.format")


async def claim(conn: asyncpg.Connection, me: str, now: datetime, lease_until: datetime,
                limit: int = 20) -> list[asyncpg.Record]:
    """Claim due deliveries for `me` until `lease_until` (committed by the caller before sending): another
    sender skips them; a sender that died lets its lease run out and another takes them."""
    async with conn.transaction():
        ids = [int(r["id"]) for r in await conn.fetch(
            "SELECT id FROM notification_delivery WHERE status = 'pending' AND next_attempt_at <= $1 AND "
            "(claimed_until IS NULL OR claimed_until <= $1) ORDER BY next_attempt_at, id LIMIT $2 "
            "FOR UPDATE SKIP LOCKED", now, limit)]
        if not ids:
            return []
        await conn.execute("UPDATE notification_delivery SET claimed_by = $2, claimed_until = $3 WHERE "
                           "id = ANY($1::bigint[])", ids, me, lease_until)
        return list(await conn.fetch(
            f"SELECT {CLAIM_COLUMNS} FROM notification_delivery d JOIN notification n ON n.id = d.notification_id "
            f"JOIN notification_episode e ON e.id = n.episode_id JOIN contact_point c ON c.id = d.contact_point_id "
            f"WHERE d.id = ANY($1::bigint[]) ORDER BY d.next_attempt_at, d.id", ids))


Outcome = Literal["sent", "failed", "retry"]


async def still_pending(conn: DBConnection, delivery_id: int, me: str) -> bool:
    """Whether a claimed delivery is still pending and still ours, just before it is sent (an acknowledgement may
    have cancelled it since the claim)."""
    found = await conn.fetchval("SELECT 1 FROM notification_delivery WHERE id = $1 AND status = 'pending' AND "
                                "claimed_by = $2", delivery_id, me)
    return found is not None


async def release(conn: DBConnection, delivery_id: int, me: str) -> None:
    """Give up a claim without an attempt (the delivery was cancelled meanwhile)."""
    await conn.execute("UPDATE notification_delivery SET claimed_by = NULL, claimed_until = NULL WHERE id = $1 AND "
                       "claimed_by = $2", delivery_id, me)


async def finish(conn: asyncpg.Connection, delivery_id: int, *, me: str, attempt: int, started_at: datetime,
                 finished_at: datetime, outcome: Outcome, detail: str, next_attempt_at: datetime | None,
                 replica: str) -> str:
    """Record an attempt and settle the delivery (in the caller's transaction); its status after it.

    A delivery cancelled while it was being sent ends as sent if it went out, else stays cancelled. A sender whose
    claim was taken over (its lease ran out) records its attempt but leaves the delivery to the new claimant.
    """
    await conn.execute("INSERT INTO notification_attempt (delivery_id, attempt, started_at, finished_at, ok, "
                       "detail, replica) VALUES ($1, $2, $3, $4, $5, $6, $7)", delivery_id, attempt, started_at,
                       finished_at, outcome == "sent", detail, replica)
    status = await conn.fetchval(
        "UPDATE notification_delivery SET attempts = greatest(attempts, $2), "
        "status = CASE WHEN $3 = 'sent' THEN 'sent' WHEN status = 'cancelled' THEN 'cancelled' "
        "WHEN $3 = 'failed' THEN 'failed' ELSE 'pending' END, "
        "sent_at = CASE WHEN $3 = 'sent' THEN $4 ELSE sent_at END, "
        "last_error = CASE WHEN $3 = 'sent' THEN NULL ELSE $5 END, "
        "next_attempt_at = coalesce($6, next_attempt_at), claimed_by = NULL, claimed_until = NULL "
        "WHERE id = $1 AND claimed_by = $7 RETURNING status", delivery_id, attempt, outcome, finished_at, detail,
        next_attempt_at, me)
    if status is None:
        status = await conn.fetchval("SELECT status FROM notification_delivery WHERE id = $1", delivery_id)
    return str(status)


# -- remote acknowledgement links ----------------------------------------------------------------------------------

async def by_token(conn: DBConnection, token: str) -> asyncpg.Record | None:
    """The delivery whose acknowledgement link this is, with its alarm and recipient."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT d.id, d.username, d.channel, d.status, d.ack_expires_at, d.ack_used_at, n.alarm_id, n.tier, "
        "n.episode_id, e.started_at, e.closed_at, e.closed_reason, EXISTS (SELECT 1 FROM notification_episode l "
        "WHERE l.alarm_id = n.alarm_id AND l.id > e.id) AS superseded FROM notification_delivery d "
        "JOIN notification n ON n.id = d.notification_id JOIN notification_episode e ON e.id = n.episode_id "
        "WHERE d.ack_token_hash = $1", token_hash(token))
    return row


async def expire_link(conn: DBConnection, delivery_id: int, at: datetime) -> None:
    """End a link before its time (too many wrong passwords through it)."""
    await conn.execute("UPDATE notification_delivery SET ack_expires_at = $2 WHERE id = $1 AND ack_expires_at > $2",
                       delivery_id, at)


async def use_link(conn: asyncpg.Connection, delivery_id: int, at: datetime) -> bool:
    """Spend a link (in the acknowledgement's transaction): False when it was used already or has expired."""
    done = await conn.fetchval("UPDATE notification_delivery SET ack_used_at = $2 WHERE id = $1 AND ack_used_at IS "
                               "NULL AND ack_expires_at > $2 RETURNING id", delivery_id, at)
    return done is not None


# -- what the API shows --------------------------------------------------------------------------------------------

async def episodes(conn: DBConnection, *, alarm_id: str | None = None, open_only: bool = False,
                   limit: int = 50) -> list[dict[str, Any]]:
    """Episodes newest first, each with its notices and their deliveries."""
    where: list[str] = []
    args: list[Any] = []
    if alarm_id is not None:
        args.append(alarm_id)
        where.append(f"alarm_id = ${len(args)}")
    if open_only:
        where.append("closed_at IS NULL")
    args.append(limit)
    sql = ("SELECT id, alarm_id, started_at, priority, rule, policy_version, summary, closed_at, closed_reason FROM "
           "notification_episode" + (" WHERE " + " AND ".join(where) if where else "") +
           f" ORDER BY id DESC LIMIT ${len(args)}")
    eps = [dict(r) for r in await conn.fetch(sql, *args)]
    if not eps:
        return eps
    ids = [e["id"] for e in eps]
    notes = await conn.fetch("SELECT id, episode_id, kind, tier, repeat, due_at, status, detail, settled_at FROM "
                             "notification WHERE episode_id = ANY($1::bigint[]) ORDER BY due_at, id", ids)
    dels = await conn.fetch(
        "SELECT d.id, d.notification_id, d.username, d.channel, d.status, d.attempts, d.sent_at, d.last_error, "
        "d.next_attempt_at, d.ack_used_at FROM notification_delivery d JOIN notification n ON n.id = "
        "d.notification_id WHERE n.episode_id = ANY($1::bigint[]) ORDER BY d.id", ids)
    by_note: dict[int, list[dict[str, Any]]] = {}
    for d in dels:
        by_note.setdefault(int(d["notification_id"]), []).append(dict(d))
    by_ep: dict[int, list[dict[str, Any]]] = {}
    for n in notes:
        by_ep.setdefault(int(n["episode_id"]), []).append({**dict(n), "deliveries": by_note.get(int(n["id"]), [])})
    return [{**e, "notifications": by_ep.get(int(e["id"]), [])} for e in eps]


async def delivery(conn: DBConnection, delivery_id: int) -> dict[str, Any] | None:
    """One delivery with every attempt."""
    row = await conn.fetchrow(
        "SELECT id, notification_id, contact_point_id, username, channel, status, attempts, next_attempt_at, "
        "sent_at, last_error, ack_expires_at, ack_used_at, created_at FROM notification_delivery WHERE id = $1",
        delivery_id)
    if row is None:
        return None
    attempts = await conn.fetch("SELECT attempt, started_at, finished_at, ok, detail, replica FROM "
                                "notification_attempt WHERE delivery_id = $1 ORDER BY id", delivery_id)
    return {**dict(row), "attempt_log": [dict(a) for a in attempts]}
