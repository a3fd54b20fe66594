"""The notification sender: due notices become deliveries, deliveries go out through their channels.

Each pass (every `interval` wall seconds):
1. Due notices are taken with `FOR UPDATE SKIP LOCKED` and expanded in one transaction: an alert goes to the users
   its tier names (users, whoever is on call in a rota at that instant, every user of a role), at each of their
   enabled contact points; an acknowledgement or return notice goes to the contact points an alert of the episode
   reached. Each alert delivery gets a single-use acknowledgement link (a token derived from the service's key; its
   hash is stored) valid for `link_minutes` of clock time.
2. Due deliveries are claimed with a lease (committed), sent, and settled with their attempt recorded: sent, retried
   after a backoff (`retry_base_s` doubled per attempt, at most `retry_max_s`, wall seconds), or failed after
   `max_attempts` or on a permanent error. A sent notice is journaled on its alarm and audited
   (`notification.sent`); a failed one audited (`notification.failed`).
3. A channel (email, sms, voice, webhook) whose last `channel_failures` attempts all failed raises the service
   alarm `culturectl:notify_<channel>`; its next success returns it. A tier with nobody to notify raises
   `culturectl:notify_nobody_<rule>_t<tier>`; passes that keep failing raise `culturectl:notify_sender`.

Several replicas may run a sender on the same database: the row locks and the leases let one send each delivery.
The only double send is a sender that dies after the channel accepted a message and before it recorded it; the
second copy carries the same Message-ID / Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any

import asyncpg

from app import db
from app.alarms import journal
from app.alarms.service import AlarmService
from app.auth.principal import SYSTEM
from app.core.clock import Clock
from app.core.outage import OutageLog
from app.notify import contacts, outbox, rules, store
from app.notify.channels import Channels, DeliveryError, Message, Target
from app.records import audit

log = logging.getLogger("culturectl.notify")

CHANNELS = ("email", "sms", "voice", "webhook")


def _local(t: datetime | None, zone: tzinfo) -> str:
    return "?" if t is None else t.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


def compose(row: Mapping[str, Any], alarm: Mapping[str, Any], *, ack_url: str | None, link_expires: datetime | None,
            zone: tzinfo, acknowledged_by: str | None = None) -> Message:
    """The message of one delivery (pure): subject, plain text with the link, and the alarm's facts."""
    kind, priority, summary = str(row["kind"]), str(row["priority"]), str(row["summary"])
    tier, repeat = int(row["tier"]), int(row["repeat"])
    since = _local(row["started_at"], zone)
    if kind == "alert":
        subject = f"[{priority.upper()}] {summary}"
        again = f", repeat {repeat}" if repeat else ""
        lines = [summary, f"Alarm {row['alarm_id']} ({priority}) active since {since}; "
                          f"status now {alarm.get('status', '?')}.", f"Tier {tier} notice{again}."]
        if ack_url:
            lines.append(f"Acknowledge (single use, valid until {_local(link_expires, zone)}): {ack_url}")
    elif kind == "acknowledged":
        who = f" by {acknowledged_by}" if acknowledged_by else ""
        subject = f"[acknowledged] {summary}"
        lines = [f"Acknowledged{who}: {summary}", f"Alarm {row['alarm_id']}, active since {since}."]
    else:
        subject = f"[returned] {summary}"
        lines = [f"Returned to normal: {summary}", f"Alarm {row['alarm_id']}, active since {since}; "
                                                   f"status now {alarm.get('status', '?')}."]
    facts = {**alarm, "tier": tier, "repeat": repeat, "episode_started_at": row["started_at"].isoformat(),
             "rule": row["rule"]}
    return Message(id=f"culturectl-delivery-{row['id']}", kind=kind, subject=subject, text="\n".join(lines),
                   priority=priority, alarm_id=str(row["alarm_id"]), ack_url=ack_url, facts=facts)


def backoff(attempt: int, base: float, most: float) -> float:
    """Wall seconds before the next attempt after `attempt` failed ones (pure)."""
    return float(min(most, base * 2 ** max(0, attempt - 1)))


@dataclass
class Sender:
    """See the module docstring."""

    pool: asyncpg.Pool
    clock: Clock
    channels: Channels
    alarms: AlarmService | None
    key: bytes
    public_url: str
    zone: tzinfo
    link_minutes: float = 120.0
    retry_base_s: float = 5.0
    retry_max_s: float = 300.0
    max_attempts: int = 8
    channel_failures: int = 3
    interval: float = 1.0
    replica: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    stats: dict[str, int] = field(default_factory=lambda: {"expanded": 0, "sent": 0, "retried": 0, "failed": 0})
    _failures: dict[str, int] = field(default_factory=dict)
    _outage: OutageLog = field(default_factory=lambda: OutageLog(log, "notification sender: database unavailable"))

    def failures(self) -> dict[str, int]:
        """Consecutive failed attempts per channel (0 after a success)."""
        return dict(self._failures)

    def token(self, notification_id: int, contact_point_id: int) -> str:
        """The acknowledgement link's token of a delivery (derived: the same on every retry and replica)."""
        mac = hmac.new(self.key, f"ack:{notification_id}:{contact_point_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def _clock_s(self, wall_s: float) -> timedelta:
        """Wall seconds as clock time (a sped-up clock runs `scale` times faster than the network)."""
        return timedelta(seconds=wall_s * max(self.clock.scale, 1.0))

    async def run(self) -> None:
        """Pass after pass until cancelled; database errors are retried. Passes that keep failing raise the service
        alarm `culturectl:notify_sender` (alarms may not be going out)."""
        failed = 0
        while True:
            try:
                await self.pass_once()
                self._outage.ok()
                failed = 0
            except asyncio.CancelledError:
                raise
            except db.UNAVAILABLE as exc:
                self._outage.failed(exc)  # the historian alarm says it
            except Exception:
                failed += 1
                log.exception("notification sender pass failed; retrying")
            if self.alarms is not None and (failed == 0 or failed >= 3):
                self.alarms.service_condition("notify_sender", failed == 0, self.clock.now(),
                                              "the notification sender keeps failing: alarms may not be going out")
            await asyncio.sleep(self.interval)

    async def pass_once(self) -> int:
        """Expand due notices and send due deliveries (also when expanding failed); the deliveries attempted."""
        try:
            await self.expand_due()
        finally:
            sent = await self.send_due()
        return sent

    # -- 1. due notices -> deliveries ---------------------------------------------------------------------------

    async def expand_due(self) -> int:
        """Expand every due notice into deliveries; the number of notices expanded.

        Each notice has its own savepoint: one that cannot be expanded (a bug, a policy the code cannot read) is
        settled with the error and raises `culturectl:notify_sender`, and the others go on. Of several overdue
        alerts of one tier (the service was down) only the latest goes out.
        """
        done = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                now = self.clock.now()
                due = await outbox.take_due(conn, now)
                if not due:
                    return done
                current = await store.current(conn)
                overrides = store.as_overrides(await store.overrides(conn, covering=now))
                by_role = await store.role_users(conn)
                latest: dict[tuple[int, str, int], int] = {}
                for n in due:
                    key = (int(n["episode_id"]), str(n["kind"]), int(n["tier"]))
                    latest[key] = max(latest.get(key, -1), int(n["repeat"]))
                for n in due:
                    last = latest[(int(n["episode_id"]), str(n["kind"]), int(n["tier"]))]
                    if n["kind"] == "alert" and int(n["repeat"]) < last:
                        await outbox.supersede(conn, n["id"], now, f"overdue: superseded by repeat {last} of tier "
                                                                   f"{n['tier']}")
                        continue
                    try:
                        async with conn.transaction():
                            await self._expand(conn, n, current, overrides, by_role, now)
                    except db.UNAVAILABLE:
                        raise
                    except Exception as exc:
                        log.exception("notification %s of alarm %s cannot be expanded", n["id"], n["alarm_id"])
                        await outbox.supersede(conn, n["id"], now, f"failed: {type(exc).__name__}: {exc}"[:500])
                        if self.alarms is not None:
                            self.alarms.service_condition(
                                "notify_sender", False, now,
                                "a notification could not be expanded (see the log): alarms may not be going out")
                done += len(due)
                self.stats["expanded"] += len(due)

    async def _expand(self, conn: asyncpg.Connection, n: asyncpg.Record, current: tuple[int, rules.Policy] | None,
                      overrides: Sequence[rules.Override], by_role: dict[str, tuple[str, ...]],
                      now: datetime) -> None:
        policy = current[1] if current else None
        rule = policy.rule(str(n["rule"])) if policy else None
        if n["kind"] != "alert":
            if not rules.notice_wanted(rule, n["kind"]):
                await outbox.expand(conn, n["id"], [], now, None, f"{n['kind']} notice: rule {n['rule']} does not "
                                                                  f"ask for it")
                return
            targets = [outbox.Target(cp, user, ch) for cp, user, ch in await outbox.notified(conn, n["episode_id"])]
            detail = (f"{n['kind']} notice to {', '.join(sorted({t.username for t in targets}))}" if targets
                      else f"{n['kind']} notice: nobody was notified of this episode")
            await outbox.expand(conn, n["id"], targets, now, None, detail)
            return
        tier = rule.tiers[n["tier"] - 1] if rule is not None and n["tier"] <= len(rule.tiers) else None
        users: tuple[str, ...] = ()
        points: list[contacts.ContactPoint] = []
        if policy is not None and tier is not None:
            users = rules.recipients(tier, policy, overrides, now, self.zone, by_role)
            points = await contacts.for_users(conn, users, kinds=tier.notify.channels or None)
        targets = [outbox.Target(p.id, p.username, p.kind, outbox.token_hash(self.token(int(n["id"]), p.id)))
                   for p in points]
        if tier is None:
            detail = f"tier {n['tier']}: rule {n['rule']} has no such tier in the policy in force"
        elif not targets:
            reached = ", ".join(users) or "nobody on call"
            detail = f"tier {n['tier']}: nobody to notify ({reached}; no enabled contact point)"
        else:
            detail = f"tier {n['tier']}: {', '.join(sorted({t.username for t in targets}))} ({len(targets)} " \
                     f"contact points)"
        await outbox.expand(conn, n["id"], targets, now, now + timedelta(minutes=self.link_minutes), detail)
        if not targets:
            log.error("alarm %s: %s", n["alarm_id"], detail)
            await journal.note(conn, str(n["alarm_id"]), now, f"notification {detail}", SYSTEM.label)
        if self.alarms is not None:  # one alarm per rule and tier: another tier's success does not hide this one
            name = "notify_nobody_" + "".join(c if c.isalnum() else "_" for c in f"{n['rule']}_t{n['tier']}")
            self.alarms.service_condition(
                name[:64].lower(), bool(targets), now,
                f"tier {n['tier']} of notification rule {n['rule']} had nobody to notify (rota, users or contact "
                f"points): its alarms are not reaching anyone")

    # -- 2. deliveries -> channels ------------------------------------------------------------------------------

    async def send_due(self) -> int:
        """Claim due deliveries and send them concurrently; the number attempted."""
        now = self.clock.now()
        lease = max(self.channels.timeout(k) for k in CHANNELS) + 30.0
        async with self.pool.acquire() as conn:
            claimed = await outbox.claim(conn, self.replica, now, now + self._clock_s(lease))
        if claimed:
            await asyncio.gather(*(self._send(d) for d in claimed))
        return len(claimed)

    async def _send(self, d: asyncpg.Record) -> None:
        async with self.pool.acquire() as conn:
            if not await outbox.still_pending(conn, int(d["id"]), self.replica):
                await outbox.release(conn, int(d["id"]), self.replica)
                return  # cancelled (acknowledged) since the claim, or taken over
        alarm = self.alarms.alarms.get(str(d["alarm_id"])) if self.alarms is not None else None
        view = alarm.view() if alarm is not None else {"id": d["alarm_id"]}
        token = self.token(int(d["notification_id"]), int(d["contact_point_id"])) if d["kind"] == "alert" else None
        ack_url = f"{self.public_url.rstrip('/')}/ack/{token}" if token else None
        by = None
        if d["kind"] == "acknowledged":
            async with self.pool.acquire() as conn:
                ack = await conn.fetchrow("SELECT actor, comment FROM alarm_event WHERE alarm_id = $1 AND reason IN "
                                          "('acknowledge', 'acknowledged') ORDER BY id DESC LIMIT 1", d["alarm_id"])
            if ack is not None:
                who = str(ack["actor"] or "?").removeprefix("user:")
                by = f"{who} ({ack['comment']})" if ack["comment"] else who
        message = compose(d, view, ack_url=ack_url, link_expires=d["ack_expires_at"], zone=self.zone,
                          acknowledged_by=by)
        attempt = int(d["attempts"]) + 1
        started = self.clock.now()
        try:
            detail = await self.channels.send(Target(d["contact_kind"], d["address"], d["format"]), message)
            outcome: outbox.Outcome = "sent"
        except DeliveryError as exc:
            detail = str(exc)
            outcome = "failed" if exc.permanent or attempt >= self.max_attempts else "retry"
        except Exception as exc:  # a bug in a channel must not stop the sender; the attempt says what happened
            log.exception("notification delivery %s: channel %s failed unexpectedly", d["id"], d["contact_kind"])
            detail = f"{type(exc).__name__}: {exc}"
            outcome = "failed" if attempt >= self.max_attempts else "retry"
        finished = self.clock.now()
        wait = self._clock_s(backoff(attempt, self.retry_base_s, self.retry_max_s)) if outcome == "retry" else None
        async with self.pool.acquire() as conn, conn.transaction():
            status = await outbox.finish(conn, int(d["id"]), me=self.replica, attempt=attempt, started_at=started,
                                         finished_at=finished, outcome=outcome, detail=detail[:2000],
                                         next_attempt_at=finished + wait if wait is not None else None,
                                         replica=self.replica)
            what = f"{d['kind']} notice" if d["kind"] != "alert" else f"tier {d['tier']}" + (
                f" repeat {d['repeat']}" if d["repeat"] else "")
            where = f"{d['username']} by {d['contact_kind']}"
            if status == "sent":
                await journal.note(conn, str(d["alarm_id"]), finished, f"notified {where} ({what})", SYSTEM.label)
            if status in ("sent", "failed"):
                await audit.record(conn, actor=SYSTEM, action=f"notification.{status}",
                                   entity_type="notification_delivery", entity_id=str(d["id"]), old=None,
                                   new={"alarm_id": d["alarm_id"], "to": d["username"], "channel": d["contact_kind"],
                                        "contact_point_id": d["contact_point_id"], "notice": what,
                                        "attempt": attempt, "detail": detail[:500]},
                                   reason=f"alarm notification {what} to {where}")
        self.stats["sent" if status == "sent" else "failed" if status == "failed" else "retried"] += 1
        self._health(str(d["contact_kind"]), outcome == "sent", finished, detail)

    def _health(self, channel: str, ok: bool, at: datetime, detail: str) -> None:
        """Count consecutive failures of a channel; raise or return its service alarm."""
        if ok:
            self._failures[channel] = 0
        else:
            self._failures[channel] = self._failures.get(channel, 0) + 1
            log.warning("notification by %s failed (%d in a row): %s", channel, self._failures[channel], detail)
        if self.alarms is not None and (ok or self._failures[channel] >= self.channel_failures):
            self.alarms.service_condition(
                f"notify_{channel}", ok, at,
                f"notifications by {channel} keep failing ({self.channel_failures} attempts in a row): alarms are "
                f"not reaching people by {channel}")
