"""The outbox and its sender against a real PostgreSQL, a real SMTP server and a real webhook receiver.

The alarm service runs in this process on a clock the tests move by hand; CO2 readings below the LL limit for its
30-minute on-delay raise the high-priority alarm, as a lost CO2 supply would. Each test sets its own policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from app import db
from app.alarms.service import AlarmService
from app.auth import users
from app.auth.principal import Principal, Role, cli_principal
from app.core.clock import ManualClock
from app.core.live import LiveHub
from app.devices.registry import sync_devices
from app.ingest.spool import Spool
from app.notify import contacts, store
from app.notify.channels import Channels, verify_signature
from app.notify.rules import Policy
from app.notify.sender import Sender
from app.settings import Settings
from drivers.base import Quality, Reading
from drivers.devices import DeviceConfig
from tests.notify.support import SMTPServer, WebhookReceiver

DEVICES = [DeviceConfig(name="n-inc", kind="incubator", protocol="opcua", endpoint="opc.tcp://127.0.0.1:1/x")]
CO2 = "n-inc.co2:limit"
SECRET = "webhook-secret-for-tests"
T0 = datetime(2026, 12, 5, 1, 30, tzinfo=UTC)  # a Saturday, 02:30 in Paris
ADMIN = cli_principal()


@dataclass
class World:
    pool: asyncpg.Pool
    smtp: SMTPServer
    hooks: WebhookReceiver
    settings: Settings


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[SMTPServer, WebhookReceiver]]:
    with SMTPServer() as smtp, WebhookReceiver() as hooks:
        yield smtp, hooks


@pytest.fixture(scope="module")
async def world(db_dsn: str, servers: tuple[SMTPServer, WebhookReceiver],
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    smtp, hooks = servers
    pool = await db.create_pool(db_dsn)
    async with pool.acquire() as conn:
        await sync_devices(conn, DEVICES)
        for name, role in (("alice", Role.OPERATOR), ("bob", Role.SUPERVISOR), ("carol", Role.OPERATOR)):
            await users.create_user(conn, username=name, display_name=name.title(), role=role,
                                    password="Seven-Day-Culture-42", actor=ADMIN)
        await contacts.create(conn, username="alice", kind="email", address="alice@site.example", actor=ADMIN,
                              reason="on-call phone mail")
        await contacts.create(conn, username="bob", kind="webhook", address=hooks.url("/bob"), actor=ADMIN,
                              reason="supervisor's chat")
        await contacts.create(conn, username="carol", kind="email", address="carol@site.example", actor=ADMIN,
                              reason="day shift")
    settings = Settings(data_dir=tmp_path_factory.mktemp("notify"), **smtp.settings(),
                        webhook_secret=SecretStr(SECRET), webhook_timeout=3.0, site_timezone="Europe/Paris")
    try:
        yield World(pool, smtp, hooks, settings)
    finally:
        await pool.close()


def policy(**tier1: Any) -> Policy:
    return Policy.model_validate({
        "rotas": [{"name": "nights", "shifts": [
            {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "18:00", "end": "08:00",
             "users": ["alice"]},
            {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "08:00", "end": "18:00",
             "users": ["carol"]}]}],
        "rules": [
            {"name": "co2", "match": {"priorities": ["high"], "roles": ["incubator.co2"]},
             "tiers": [{"notify": {"rotas": ["nights"]}, "repeat_every_min": 30, "repeats": 1, **tier1},
                       {"notify": {"users": ["bob"]}, "after_min": 15}],
             "notify_acknowledged": True},
            {"name": "service", "match": {"kinds": ["service"]}, "tiers": [{"notify": {"users": ["alice"]}}]},
        ]})


@dataclass
class Rig:
    clock: ManualClock
    svc: AlarmService
    sender: Sender
    smtp: SMTPServer
    hooks: WebhookReceiver
    mails: int = 0
    calls: int = 0

    async def pass_(self) -> None:
        await self.svc.flush()
        await self.sender.pass_once()

    async def low_co2(self, minutes: int = 31) -> None:
        """CO2 at 1.5 % for `minutes` clock minutes, one reading a minute: LL activates after its 30-min on-delay."""
        for i in range(minutes):  # a live sensor's noise: a repeated value would be a frozen sensor (stale)
            self.svc.on_reading(Reading("n-inc.co2", 1.5 + 0.01 * (i % 3), self.clock.now(), Quality.GOOD))
            self.svc.tick()
            self.clock.advance(60)
        await self.svc.flush()

    def new_mail(self) -> list[Any]:
        out = self.smtp.messages[self.mails:]
        self.mails += len(out)
        return out

    def new_calls(self) -> list[Any]:
        out = self.hooks.requests[self.calls:]
        self.calls += len(out)
        return out


_DAYS = [0]


async def rig(world: World, pol: Policy, *, replica: str = "r1", **kw: Any) -> Rig:
    """A fresh alarm service and sender, a day after the last test's (02:30 in Paris again): alarm rows never go
    back in time."""
    _DAYS[0] += 1
    start = T0 + timedelta(days=_DAYS[0])
    clock = ManualClock(start)
    svc = AlarmService(clock, LiveHub(), DEVICES, pool=world.pool)
    async with world.pool.acquire() as conn:
        await conn.execute("UPDATE notification_episode SET closed_at = now(), closed_reason = 'test reset' "
                           "WHERE closed_at IS NULL")
        await conn.execute("UPDATE notification_delivery SET status = 'cancelled' WHERE status = 'pending'")
        await conn.execute("UPDATE notification SET status = 'cancelled' WHERE status = 'pending'")
        await store.save(conn, pol, principal=ADMIN, reason="test policy", at=start)
        await svc.refresh(conn)
    sender = Sender(world.pool, clock, Channels(world.settings, clock.now), svc, b"k" * 32, "https://culturectl.example",
                    world.settings.zone(), retry_base_s=kw.pop("retry_base_s", 60.0), replica=replica, **kw)
    r = Rig(clock, svc, sender, world.smtp, world.hooks, len(world.smtp.messages), len(world.hooks.requests))
    return r


async def person(pool: asyncpg.Pool, name: str) -> Principal:
    async with pool.acquire() as conn:
        row = await users.get_user_by_name(conn, name)
    assert row is not None
    return users.user_principal(row)


async def rows(pool: asyncpg.Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


async def test_a_co2_alarm_at_night_reaches_tier_1_escalates_to_tier_2_and_stops_when_acknowledged(
        world: World) -> None:
    r = await rig(world, policy())
    await r.low_co2()
    assert r.svc.alarms[CO2].state.status.value == "active_unack"
    [ep] = await rows(world.pool, "SELECT * FROM notification_episode WHERE alarm_id = $1 AND closed_at IS NULL", CO2)
    planned = await rows(world.pool, "SELECT tier, repeat, due_at FROM notification WHERE episode_id = $1 "
                                     "ORDER BY due_at", ep["id"])
    start = ep["started_at"]
    assert [(p["tier"], p["repeat"], (p["due_at"] - start) / timedelta(minutes=1)) for p in planned] == [
        (1, 0, 0.0), (2, 0, 15.0), (1, 1, 30.0)]

    await r.pass_()  # tier 1: alice is on the night shift (02:30 in Paris)
    [mail] = await asyncio.to_thread(lambda: r.smtp.wait(r.mails + 1)[r.mails:])
    r.mails += 1
    assert mail.rcpt_tos == ["alice@site.example"]
    assert "[HIGH]" in mail.message["Subject"] and "n-inc.co2 LL" in mail.message["Subject"]
    assert "https://culturectl.example/ack/" in mail.text and "Tier 1 notice" in mail.text
    assert not r.new_calls()

    r.clock.advance(10 * 60)
    await r.pass_()
    assert not r.new_mail() and not r.new_calls()  # tier 2 is due 15 min after tier 1
    r.clock.advance(6 * 60)
    await r.pass_()
    [call] = await asyncio.to_thread(lambda: r.hooks.wait(r.calls + 1)[r.calls:])
    r.calls += 1
    assert call.path == "/bob"
    assert verify_signature(SECRET, call.headers["x-culturectl-timestamp"], call.body,
                            call.headers["x-culturectl-signature"])
    body = call.json()
    assert body["kind"] == "alert" and body["priority"] == "high" and body["alarm"]["tier"] == 2
    assert body["ack_url"].startswith("https://culturectl.example/ack/")

    bob = await person(world.pool, "bob")
    await r.svc.act(CO2, "acknowledge", principal=bob, comment="CO2 cylinder swapped")
    r.clock.advance(60 * 60)  # tier 1's repeat (at 30 min) is long due: it was cancelled
    await r.pass_()
    notices = r.new_mail() + r.new_calls()
    assert len(notices) == 2, notices  # the acknowledgement notice to each of the two people notified
    mail = next(n for n in notices if hasattr(n, "rcpt_tos"))
    assert mail.message["Subject"].startswith("[acknowledged]") and "by bob" in mail.text
    left = await rows(world.pool, "SELECT kind, tier, repeat, status, detail FROM notification WHERE episode_id = $1 "
                                  "ORDER BY id", ep["id"])
    assert [(n["kind"], n["tier"], n["repeat"], n["status"]) for n in left] == [
        ("alert", 1, 0, "expanded"), ("alert", 2, 0, "expanded"), ("alert", 1, 1, "cancelled"),
        ("acknowledged", 0, 0, "expanded")]
    [closed] = await rows(world.pool, "SELECT closed_reason FROM notification_episode WHERE id = $1", ep["id"])
    assert closed["closed_reason"] == "acknowledge"
    journal = [e["reason"] for e in await rows(world.pool, "SELECT reason FROM alarm_event WHERE alarm_id = $1 "
                                                           "AND at >= $2 ORDER BY id", CO2, start - timedelta(hours=1))]
    # L (medium, no rule) first, then LL (high): the episode starts with the escalation
    assert journal[:5] == ["activated", "escalated", "notified alice by email (tier 1)",
                           "notified bob by webhook (tier 2)", "acknowledge"]
    sent = await rows(world.pool, "SELECT count(*) AS n FROM audit_log WHERE action = 'notification.sent'")
    assert sent[0]["n"] >= 4
    carol = [m for m in world.smtp.messages if "carol@site.example" in m.rcpt_tos]
    assert not carol  # the day shift was not woken


async def test_shelved_alarms_do_not_notify_and_shelving_stops_an_episode(world: World) -> None:
    r = await rig(world, policy())
    alice = await person(world.pool, "alice")
    await r.svc.act(CO2, "shelve", principal=alice, comment="sensor service", until=r.clock.now() + timedelta(hours=2))
    await r.low_co2()
    await r.pass_()
    assert not await rows(world.pool, "SELECT 1 FROM notification_episode WHERE alarm_id = $1 AND closed_at IS NULL",
                          CO2)
    assert not r.new_mail() and not r.new_calls()

    await r.svc.act(CO2, "unshelve", principal=alice, comment="back")  # still active: notify now
    await r.pass_()
    assert len(r.new_mail()) == 1
    await r.svc.act(CO2, "out_of_service", principal=await person(world.pool, "bob"),
                    comment="probe replaced")
    r.clock.advance(3600)
    await r.pass_()
    assert not r.new_mail() and not r.new_calls()  # tier 2 and the repeat were cancelled
    [ep] = await rows(world.pool, "SELECT closed_reason FROM notification_episode WHERE alarm_id = $1 ORDER BY id "
                                  "DESC LIMIT 1", CO2)
    assert ep["closed_reason"] == "out of service"


async def test_a_failing_channel_raises_its_service_alarm_which_reaches_someone_by_another_channel(
        world: World) -> None:
    r = await rig(world, policy(notify={"users": ["bob"], "channels": ["webhook"]}), retry_base_s=0.001,
                  channel_failures=3, max_attempts=5)
    world.hooks.status = 503
    try:
        await r.low_co2()
        for _ in range(3):
            await r.pass_()
            r.clock.advance(1)
        assert len(r.new_calls()) == 3  # the first attempt and two retries
        alarm = r.svc.alarms["culturectl:notify_webhook"]
        assert alarm.state.status.value == "active_unack" and alarm.priority() == "high"
        await r.pass_()  # the service alarm's own notice: by email to alice
        mail = r.new_mail()
        assert any("notify_webhook" in m.message["Subject"] or "webhook" in m.text for m in mail), mail
        [d] = await rows(world.pool, "SELECT d.id, d.status, d.attempts, d.last_error FROM notification_delivery d "
                                     "JOIN notification n ON n.id = d.notification_id WHERE n.alarm_id = $1 "
                                     "ORDER BY d.id DESC LIMIT 1", CO2)
        assert d["status"] == "pending" and d["attempts"] == 4 and "503" in d["last_error"]
        attempts = await rows(world.pool, "SELECT attempt, ok, detail FROM notification_attempt WHERE delivery_id = "
                                          "$1 ORDER BY id", d["id"])
        assert [(a["attempt"], a["ok"]) for a in attempts] == [(1, False), (2, False), (3, False), (4, False)]
    finally:
        world.hooks.status = 200
    r.clock.advance(1)
    await r.pass_()  # the receiver is back: the fifth attempt goes out and the channel's alarm returns
    assert r.svc.alarms["culturectl:notify_webhook"].state.active is None


async def test_two_senders_on_one_outbox_send_each_delivery_once(world: World) -> None:
    r1 = await rig(world, policy(notify={"users": ["alice", "bob", "carol"]}))
    r2 = Sender(world.pool, r1.clock, Channels(world.settings, r1.clock.now), r1.svc, b"k" * 32,
                "https://culturectl.example", world.settings.zone(), replica="r2")
    await r1.low_co2()
    for _ in range(6):
        await asyncio.gather(r1.sender.pass_once(), r2.pass_once(), r1.sender.pass_once(), r2.pass_once())
    mails, calls = r1.new_mail(), r1.new_calls()
    assert len(mails) == 2 and len(calls) == 1  # alice and carol by email, bob by webhook: once each
    ids = [m.message["Message-ID"] for m in mails] + [c.headers["idempotency-key"] for c in calls]
    assert len(set(ids)) == 3
    per = await rows(world.pool, "SELECT d.id, count(a.id) AS n, min(a.replica) AS replica FROM notification_delivery "
                                 "d JOIN notification n ON n.id = d.notification_id JOIN notification_attempt a ON "
                                 "a.delivery_id = d.id WHERE n.alarm_id = $1 AND n.status = 'expanded' AND "
                                 "d.created_at >= $2 GROUP BY d.id", CO2, r1.clock.now() - timedelta(hours=1))
    assert len(per) == 3 and all(p["n"] == 1 for p in per)


async def test_a_second_replica_that_saw_the_same_activation_plans_nothing(world: World) -> None:
    r1 = await rig(world, policy())
    other = AlarmService(r1.clock, LiveHub(), DEVICES, pool=world.pool)
    async with world.pool.acquire() as conn:
        await other.refresh(conn)
    for i in range(31):  # both replicas read the same device and raise the same alarm
        for svc in (r1.svc, other):
            svc.on_reading(Reading("n-inc.co2", 1.5 + 0.01 * (i % 3), r1.clock.now(), Quality.GOOD))
            svc.tick()
        r1.clock.advance(60)
    await asyncio.gather(r1.svc.flush(), other.flush())
    eps = await rows(world.pool, "SELECT id FROM notification_episode WHERE alarm_id = $1 AND closed_at IS NULL", CO2)
    assert len(eps) == 1
    assert len(await rows(world.pool, "SELECT 1 FROM notification WHERE episode_id = $1", eps[0]["id"])) == 3


async def test_the_plan_waits_in_the_spool_while_the_database_is_down(world: World, tmp_path: Path) -> None:
    r = await rig(world, policy())
    spool = Spool(tmp_path / "spool.sqlite3")
    await spool.open()
    historian: dict[str, Any] = {"db_down_since": 1.0}
    r.svc.spool, r.svc.historian = spool, lambda: historian
    try:
        await r.low_co2()  # the transition and its notification plan go to the spool
        assert spool.record_count >= 3
        assert not await rows(world.pool, "SELECT 1 FROM notification_episode WHERE alarm_id = $1 AND closed_at IS "
                                          "NULL", CO2)
        historian["db_down_since"] = None
        await r.pass_()  # written in order when the database is back, then sent
        assert spool.record_count == 0
        mails = await asyncio.to_thread(lambda: r.smtp.wait(r.mails + 2)[r.mails:])
        subjects = sorted(str(m.message["Subject"]) for m in mails)
        # the CO2 alarm, and the historian's own alarm (a service alarm: the rule "service" sends it to alice)
        assert len(mails) == 2 and {m.rcpt_tos[0] for m in mails} == {"alice@site.example"}, subjects
        assert "n-inc.co2 LL" in subjects[1] and "culturectl" in subjects[0] and "database" in subjects[0]
    finally:
        await spool.close()


async def test_nobody_on_call_raises_the_recipients_alarm(world: World) -> None:
    gap = Policy.model_validate({
        "rotas": [{"name": "days", "shifts": [{"days": ["mon"], "start": "08:00", "end": "18:00",
                                                "users": ["carol"]}]}],
        "rules": [{"name": "co2", "match": {"roles": ["incubator.co2"]}, "tiers": [{"notify": {"rotas": ["days"]}}]}]})
    r = await rig(world, gap)
    await r.low_co2()
    await r.pass_()
    assert not r.new_mail()
    alarm = r.svc.alarms["culturectl:notify_nobody_co2_t1"]  # one per rule and tier
    assert alarm.state.status.value == "active_unack"
    [n] = await rows(world.pool, "SELECT detail FROM notification n JOIN notification_episode e ON e.id = "
                                 "n.episode_id WHERE e.alarm_id = $1 AND e.closed_at IS NULL", CO2)
    assert "nobody to notify" in n["detail"] and "nobody on call" in n["detail"]


async def test_work_that_comes_late_does_not_undo_an_acknowledgement(world: World) -> None:
    """Replica B flushes its view of the activation after replica A's operator acknowledged: no new episode."""
    r1 = await rig(world, policy())
    late = AlarmService(r1.clock, LiveHub(), DEVICES, pool=world.pool)
    async with world.pool.acquire() as conn:
        await late.refresh(conn)
    for i in range(31):
        for svc in (r1.svc, late):
            svc.on_reading(Reading("n-inc.co2", 1.5 + 0.01 * (i % 3), r1.clock.now(), Quality.GOOD))
            svc.tick()
        r1.clock.advance(60)
    await r1.svc.flush()
    await r1.svc.act(CO2, "acknowledge", principal=await person(world.pool, "alice"), comment="on it")
    await late.flush()  # its Start is older than the acknowledgement
    assert not await rows(world.pool, "SELECT 1 FROM notification_episode WHERE alarm_id = $1 AND closed_at IS NULL",
                          CO2)
    r1.clock.advance(3600)
    await r1.sender.pass_once()
    assert not [m for m in r1.new_mail() if "[HIGH]" in str(m.message["Subject"])]


async def test_after_an_outage_of_the_sender_overdue_repeats_go_out_once(world: World) -> None:
    r = await rig(world, policy())
    await r.low_co2()
    r.clock.advance(2 * 3600)  # the sender was down: tier 1, its repeat and tier 2 are all overdue
    await r.pass_()
    mails, calls = r.new_mail(), r.new_calls()
    assert len(mails) == 1 and "repeat 1" in mails[0].text  # the latest of tier 1, not a burst
    assert len(calls) == 1 and calls[0].json()["alarm"]["tier"] == 2
    [superseded] = await rows(world.pool, "SELECT n.detail FROM notification n JOIN notification_episode e ON e.id = "
                                          "n.episode_id WHERE e.alarm_id = $1 AND e.closed_at IS NULL AND n.tier = 1 "
                                          "AND n.repeat = 0", CO2)
    assert superseded["detail"] == "overdue: superseded by repeat 1 of tier 1"


async def test_a_service_alarm_active_at_a_restart_comes_back_and_returns(world: World) -> None:
    r = await rig(world, policy())
    r.svc.service_condition("notify_sms", False, r.clock.now(), "notifications by sms keep failing")
    await r.svc.flush()
    again = AlarmService(r.clock, LiveHub(), DEVICES, pool=world.pool)
    async with world.pool.acquire() as conn:
        await again.restore(conn)
    alarm = again.get("culturectl:notify_sms")  # known after the restart: it can be acknowledged and returned
    assert alarm.state.status.value == "active_unack"
    again.service_condition("notify_sms", True, r.clock.now(), "notifications by sms keep failing")
    assert alarm.state.status.value == "returned_unack"
