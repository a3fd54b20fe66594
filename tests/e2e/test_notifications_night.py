"""A CO2 alarm at night reaches a person: two `culturectl serve` replicas on one database, the simulators, a real
SMTP server and a real webhook receiver; the clock runs x600 from 02:40 in Paris.

The CO2 supply runs empty: CO2 falls below 3 % and the LL alarm (high priority) activates after its 30-minute
on-delay. Tier 1 (the night shift of the rota) gets an email with a single-use link; nobody acknowledges within 15
minutes, so tier 2 (the supervisor) gets a signed webhook. The night-shift operator opens the link, gives the
password and a comment: the alarm is acknowledged, the rest of the call tree is cancelled, both hear of the
acknowledgement, and the link cannot be used again. Both replicas saw the alarm and both run a sender, yet every
notice went out once.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from app import db
from app.auth import users
from app.auth.principal import Role, cli_principal
from app.core.clock import ScaledClock, utcnow
from app.notify import contacts, store
from app.notify.channels import verify_signature
from app.notify.rules import Policy
from drivers.devices import dump_devices
from simulators.culture_system import CultureSystemSimulator
from simulators.faults import Fault
from simulators.incubator import IncubatorSimulator
from simulators.runner import device_configs
from tests.notify.support import SMTPServer, WebhookReceiver
from tests.support import OwnServer, free_port, wait_for

SCALE = 600.0  # 1 wall second = 10 clock minutes
PASSWORD = "Night-Shift-Culture-42"
SECRET = "night-webhook-secret"
ALARM = "incubator-1.co2:limit"
PARIS = ZoneInfo("Europe/Paris")
POLICY = {
    "rotas": [{"name": "incubators", "shifts": [
        {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "18:00", "end": "08:00",
         "users": ["alice"]},
        {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "08:00", "end": "18:00",
         "users": ["carol"]}]}],
    "rules": [{"name": "co2-supply", "match": {"priorities": ["high"], "roles": ["incubator.co2"]},
               "tiers": [{"notify": {"rotas": ["incubators"]}, "repeat_every_min": 60, "repeats": 1},
                         {"notify": {"users": ["bob"]}, "after_min": 15},
                         {"notify": {"roles": ["admin"]}, "after_min": 60}],
               "notify_acknowledged": True}],
}


@dataclass
class Replica:
    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "app.cli", "serve", "--port", str(self.port), stdout=out,
                stderr=asyncio.subprocess.STDOUT, env=self.env)

    async def ready(self) -> bool:
        assert self.proc is not None and self.proc.returncode is None, self.log.read_text(errors="replace")[-3000:]
        try:
            async with httpx.AsyncClient(base_url=self.url, timeout=2) as c:
                r = await c.get("/readyz")
        except httpx.TransportError:
            return False
        devices = r.json().get("devices") or {}
        return r.status_code == 200 and {d["state"] for d in devices.values()} == {"online"}

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout=20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@dataclass
class Night:
    dsn: str
    clock: ScaledClock
    incubator: IncubatorSimulator
    smtp: SMTPServer
    hooks: WebhookReceiver
    a: Replica
    b: Replica


@pytest.fixture(scope="module")
async def night() -> AsyncIterator[Night]:
    base = Path(tempfile.mkdtemp(prefix="culturectl-night-"))
    pg = OwnServer(base / "pgdata")
    local = datetime.now(PARIS).replace(hour=2, minute=40, second=0, microsecond=0)
    epoch = utcnow()
    clock = ScaledClock(epoch=epoch, scale=SCALE, origin=local)
    incubator = IncubatorSimulator(clock, seed=5)
    culture = CultureSystemSimulator(clock, seed=5, t0=clock.now() - timedelta(days=1))
    replicas: list[Replica] = []
    with SMTPServer() as smtp, WebhookReceiver() as hooks:
        try:
            dsn = await pg.start()
            await db.upgrade_async(dsn)
            conn = await db.connect(dsn)
            try:
                for name, role in (("alice", Role.OPERATOR), ("bob", Role.SUPERVISOR), ("carol", Role.OPERATOR),
                                   ("root", Role.ADMIN)):
                    await users.create_user(conn, username=name, display_name=name.title(), role=role,
                                            password=PASSWORD, actor=cli_principal())
                    await contacts.create(conn, username=name, kind="webhook" if name == "bob" else "email",
                                          address=hooks.url(f"/{name}") if name == "bob" else f"{name}@site.example",
                                          actor=cli_principal(), reason="on-call contact")
                await store.save(conn, Policy.model_validate(POLICY), principal=cli_principal(),
                                 reason="night call tree", at=clock.now())
            finally:
                await conn.close()
            await incubator.start()
            await culture.start()
            devices = base / "devices.yaml"
            devices.write_text(dump_devices(device_configs(incubator, culture, poll_interval=0.2)))
            ports = [free_port(), free_port()]
            common = {k: v for k, v in os.environ.items() if not k.startswith("CULTURECTL_") and k != "DATABASE_URL"}
            common.update({
                "CULTURECTL_DATABASE_URL": dsn, "CULTURECTL_DEVICES_FILE": str(devices),
                "CULTURECTL_TIME_SCALE": str(SCALE), "CULTURECTL_CLOCK_EPOCH": epoch.isoformat(),
                "CULTURECTL_CLOCK_ORIGIN": local.isoformat(), "CULTURECTL_SITE_TIMEZONE": "Europe/Paris",
                "CULTURECTL_SECRET_KEY": "a-shared-secret-key-of-the-replicas-0123456789",
                "CULTURECTL_PUBLIC_URL": f"http://127.0.0.1:{ports[0]}", "CULTURECTL_NOTIFY_INTERVAL": "0.1",
                "CULTURECTL_SMTP_HOST": smtp.host, "CULTURECTL_SMTP_PORT": str(smtp.port),
                "CULTURECTL_SMTP_SECURITY": "none", "CULTURECTL_SMTP_FROM": "culturectl@site.example",
                "CULTURECTL_WEBHOOK_SECRET": SECRET, "CULTURECTL_LOG_LEVEL": "info",
            })
            for name, port in zip("ab", ports, strict=True):
                env = {**common, "CULTURECTL_DATA_DIR": str(base / f"data-{name}")}
                replicas.append(Replica(name, port, env, base / f"replica-{name}.log"))
            await asyncio.gather(*(r.start() for r in replicas))
            for r in replicas:
                await wait_for(r.ready, timeout=90, what=f"replica {r.name} ready with both devices online")
            yield Night(dsn, clock, incubator, smtp, hooks, replicas[0], replicas[1])
        finally:
            await asyncio.gather(*(r.stop() for r in replicas))
            await culture.stop()
            await incubator.stop()
            await pg.stop()
            await asyncio.to_thread(shutil.rmtree, base, True)


def alerts(mails: list[Any], to: str, subject: str) -> list[Any]:
    return [m for m in mails if to in m.rcpt_tos and str(m.message["Subject"]).strip().startswith(subject)]


async def test_a_co2_alarm_at_night_escalates_and_stops_on_a_remote_acknowledgement(night: Night) -> None:
    await night.incubator.inject(Fault.co2_supply_empty)
    try:
        # tier 1: alice, on the night shift, by email with the link
        await wait_for(lambda: bool(alerts(night.smtp.messages, "alice@site.example", "[HIGH]")), timeout=60,
                       what="tier 1's email to alice")
        [first] = alerts(night.smtp.messages, "alice@site.example", "[HIGH]")
        assert "incubator-1.co2 LL" in first.message["Subject"] and "Tier 1 notice" in first.text
        link = re.search(r"(http://127\.0\.0\.1:\d+/ack/[A-Za-z0-9_-]+)", first.text)
        assert link is not None, first.text

        # nobody acknowledged within 15 min: tier 2, bob, by a signed webhook
        await wait_for(lambda: any(r.path == "/bob" for r in night.hooks.requests), timeout=30,
                       what="tier 2's webhook to bob")
        [call] = [r for r in night.hooks.requests if r.path == "/bob"]
        assert verify_signature(SECRET, call.headers["x-culturectl-timestamp"], call.body,
                                call.headers["x-culturectl-signature"])
        assert call.json()["kind"] == "alert" and call.json()["alarm"]["tier"] == 2

        # alice acknowledges from her phone: the page, then the password and a comment
        async with httpx.AsyncClient(timeout=10) as web:
            page = await web.get(link.group(1))
            assert page.status_code == 200 and "Acknowledge as <strong>alice</strong>" in page.text
            done = await web.post(link.group(1), content=b"password=" + PASSWORD.encode() +
                                  b"&comment=CO2+cylinder+empty%2C+swapping+it",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert done.status_code == 200 and "Acknowledged by Alice" in done.text, done.text
            assert 'data-testid="ack-trend"' in done.text  # then she sees the trend
            again = await web.post(link.group(1), content=b"password=" + PASSWORD.encode() + b"&comment=again",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert again.status_code == 410

        conn = await db.connect(night.dsn)
        try:
            episodes = await conn.fetch("SELECT id, closed_reason FROM notification_episode WHERE alarm_id = $1",
                                        ALARM)
            assert len(episodes) == 1, episodes  # two replicas raised the alarm: one episode
            notes = await conn.fetch("SELECT kind, tier, repeat, status FROM notification WHERE episode_id = $1 "
                                     "ORDER BY tier, repeat, kind", episodes[0]["id"])
        finally:
            await conn.close()
        assert episodes[0]["closed_reason"] == "acknowledge"
        assert {(n["kind"], n["tier"], n["repeat"]): n["status"] for n in notes if n["kind"] == "alert"} == {
            (("alert", 1, 0)): "expanded", ("alert", 1, 1): "cancelled", ("alert", 2, 0): "expanded",
            ("alert", 3, 0): "cancelled"}
        assert [n["kind"] for n in notes if n["kind"] != "alert"] == ["acknowledged"]

        # both people notified hear of the acknowledgement; then, past the cancelled repeat, nothing more comes
        await wait_for(lambda: bool(alerts(night.smtp.messages, "alice@site.example", "[acknowledged]"))
                       and sum(r.path == "/bob" for r in night.hooks.requests) == 2, timeout=30,
                       what="the acknowledgement notices")
        acked_at = night.clock.now()
        await wait_for(lambda: night.clock.now() > acked_at + timedelta(minutes=65), timeout=30,
                       what="an hour of clock time")
        mails = night.smtp.messages
        assert len(alerts(mails, "alice@site.example", "[HIGH]")) == 1  # the repeat was cancelled
        assert not [m for m in mails if "root@site.example" in m.rcpt_tos]  # tier 3 was never reached
        assert not [m for m in mails if "carol@site.example" in m.rcpt_tos]  # the day shift slept
        assert [r.json()["kind"] for r in night.hooks.requests if r.path == "/bob"] == ["alert", "acknowledged"]
        ids = [str(m.message["Message-ID"]) for m in mails] + [r.headers["idempotency-key"]
                                                                for r in night.hooks.requests]
        assert len(ids) == len(set(ids)) == 4  # every notice once, whichever replica sent it

        conn = await db.connect(night.dsn)
        try:
            attempts = await conn.fetch("SELECT d.id, count(a.id) AS n FROM notification_delivery d JOIN "
                                        "notification_attempt a ON a.delivery_id = d.id GROUP BY d.id")
            journal = [r["reason"] for r in await conn.fetch(
                "SELECT reason FROM alarm_event WHERE alarm_id = $1 ORDER BY id", ALARM)]
            audit = await conn.fetch("SELECT action, actor_name, reason FROM audit_log WHERE action IN "
                                     "('alarm.acknowledge', 'notification.sent') ORDER BY seq")
        finally:
            await conn.close()
        assert len(attempts) == 4 and all(a["n"] == 1 for a in attempts)
        assert "notified alice by email (tier 1)" in journal and "notified bob by webhook (tier 2)" in journal
        assert any(j.startswith("acknowledged through the remote link") for j in journal)
        assert [(a["action"], a["actor_name"]) for a in audit if a["action"] == "alarm.acknowledge"] == [
            ("alarm.acknowledge", "alice")]
        assert sum(a["action"] == "notification.sent" for a in audit) == 4
        sent = 0.0
        async with httpx.AsyncClient(timeout=5) as web:
            for replica in (night.a, night.b):
                body = (await web.get(f"{replica.url}/metrics")).text
                sent += next(float(line.split()[-1]) for line in body.splitlines()
                             if line.startswith("culturectl_notifications_sent_total "))
        assert sent == 4  # the two replicas' senders together
    finally:
        await night.incubator.clear(Fault.co2_supply_empty)
