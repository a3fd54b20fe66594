"""Sessions in use (admin: the list, never a token; the revocation with a reason, audited, and the revoked token's
next call is 401) and the notification test of a rota or a rule through the real channels (an SMTP server here)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta

import pytest

from app import db
from app.auth.principal import cli_principal
from app.notify import contacts, rules, store
from tests.api.conftest import Service, running_service
from tests.api.test_auth import audit_head, audit_rows
from tests.notify.support import SMTPServer

ME = "/api/v1/auth/me"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@pytest.fixture(scope="module")
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory,
                  smtp: SMTPServer) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("sessions"), **smtp.settings()) as svc:
        yield svc


async def test_an_admin_lists_sessions_in_use_and_revokes_one_whose_next_call_is_401(service: Service) -> None:
    admin_id, _n, _p, admin = await service.user("admin")
    user_id, username, _password, headers = await service.user("operator")
    r = await service.client.get("/api/v1/sessions", headers=admin)
    assert r.status_code == 200, r.text
    mine = [s for s in r.json() if s["user_id"] == user_id]
    assert len(mine) == 1 and mine[0]["username"] == username and mine[0]["role"] == "operator"
    assert set(mine[0]) == {"id", "user_id", "username", "display_name", "role", "issued_at", "last_activity_at",
                            "expires_at", "current"}
    assert [s["current"] for s in r.json() if s["user_id"] == admin_id] == [True]
    token = headers["Authorization"].split()[1]
    conn = await db.connect(service.dsn)
    try:
        jtis = [j for (j,) in await conn.fetch("SELECT jti FROM sessions WHERE user_id = $1", user_id)]
    finally:
        await conn.close()
    assert token not in r.text and not any(j in r.text for j in jtis)  # neither the token nor its id
    only = await service.client.get(f"/api/v1/sessions?user_id={user_id}", headers=admin)
    assert [s["id"] for s in only.json()] == [mine[0]["id"]]
    assert (await service.client.get("/api/v1/sessions", headers=headers)).status_code == 403

    url = f"/api/v1/sessions/{mine[0]['id']}/revoke"
    assert (await service.client.post(url, headers=headers, json={"reason": "x"})).status_code == 403
    r = await service.client.post(url, headers=admin, json={})
    assert r.status_code == 422 and "reason" in r.text
    before = await audit_head(service)
    r = await service.client.post(url, headers=admin, json={"reason": "laptop left logged in at the bench"})
    assert r.status_code == 200, r.text
    r = await service.client.get(ME, headers=headers)
    assert r.status_code == 401 and r.json()["type"].endswith("/session-revoked"), r.text
    rows = await audit_rows(service, before)
    assert [(x["action"], x["actor_id"], x["entity_id"], x["reason"]) for x in rows] == [
        ("session.revoke", admin_id, str(user_id), "laptop left logged in at the bench")]
    new = rows[0]["new"]
    assert (json.loads(new) if isinstance(new, str) else new)["session"] == mine[0]["id"]
    assert (await service.client.post(url, headers=admin, json={"reason": "again"})).status_code == 409
    listed = (await service.client.get("/api/v1/sessions", headers=admin)).json()
    assert mine[0]["id"] not in {s["id"] for s in listed}
    r = await service.client.post(f"/api/v1/sessions/{'0' * 24}/revoke", headers=admin, json={"reason": "x"})
    assert r.status_code == 404


async def test_refusals_of_account_forms_name_their_field(service: Service) -> None:
    admin = await service.login("admin")
    r = await service.client.post("/api/v1/users", headers=admin, json={
        "username": "weak-one", "display_name": "Weak One", "role": "operator", "password": "short"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "password", r.text
    _id, taken, _p = await service.create_user("operator")
    r = await service.client.post("/api/v1/users", headers=admin, json={
        "username": taken, "display_name": "Again", "role": "operator", "password": "Another-Good-Password-1"})
    assert r.status_code == 409 and r.json()["field"] == "username", r.text


def _policy(user: str, other: str, idle_day: str) -> rules.Policy:
    return rules.Policy.model_validate({
        "rules": [{"name": "high", "match": {"priorities": ["high"]},
                   "tiers": [{"notify": {"rotas": ["day"], "channels": ["email"]}},
                             {"notify": {"users": [other]}, "after_min": 10}]}],
        "rotas": [{"name": "day", "shifts": [{"days": list(WEEKDAYS), "start": "00:00", "end": "00:00",
                                              "users": [user, other]}]},
                  {"name": "quiet", "shifts": [{"days": [idle_day], "start": "00:00", "end": "00:01",
                                                "users": [user]}]}]})


async def test_a_test_notification_reaches_whoever_a_rota_or_a_rules_first_tier_notifies_now(
        service: Service, smtp: SMTPServer) -> None:
    admin_id, _n, _p, admin = await service.user("admin")
    _uid, user, _pw = await service.create_user("operator")
    _oid, other, _pw2 = await service.create_user("supervisor")
    today = datetime.now().astimezone(service.settings.zone()).weekday()
    conn = await db.connect(service.dsn)
    try:
        email = await contacts.create(conn, username=user, kind="email", address=f"{user}@site.example",
                                      actor=cli_principal())
        sms = await contacts.create(conn, username=user, kind="sms", address="+15550100200", actor=cli_principal())
        await store.save(conn, _policy(user, other, WEEKDAYS[(today + 3) % 7]), principal=cli_principal(),
                         reason="test policy", at=datetime.now().astimezone())
    finally:
        await conn.close()

    before = await audit_head(service)
    r = await service.client.post("/api/v1/notifications/test", headers=admin, json={"rota": "day"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recipients"] == [user, other]
    sends = {(s["username"], s["contact_point_id"]): s for s in body["sends"]}
    assert sends[(user, email.id)]["ok"] is True and sends[(user, email.id)]["detail"].startswith("250")
    assert sends[(user, sms.id)]["ok"] is False and "not configured" in sends[(user, sms.id)]["detail"]
    assert sends[(other, None)]["ok"] is False and "no enabled contact point" in sends[(other, None)]["detail"]
    mail = (await smtp.arrived(1))[-1]
    assert mail.rcpt_tos == [f"{user}@site.example"]
    tests = await audit_rows(service, before, "contact_point.test")
    assert [(x["entity_id"], x["actor_id"]) for x in tests] == [(str(email.id), admin_id)]

    # a rule: its first tier only, on the tier's channels (email): the SMS contact point is not tried
    r = await service.client.post("/api/v1/notifications/test", headers=admin, json={"rule": "high"})
    assert r.status_code == 200, r.text
    assert [(s["username"], s["kind"], s["ok"]) for s in r.json()["sends"]] == [
        (user, "email", True), (other, None, False)]

    r = await service.client.post("/api/v1/notifications/test", headers=admin, json={"rota": "quiet"})
    assert r.status_code == 409 and "nobody" in r.json()["detail"], r.text
    r = await service.client.post("/api/v1/notifications/test", headers=admin, json={"rota": "nope"})
    assert r.status_code == 404 and r.json()["field"] == "rota", r.text
    for bad in ({}, {"rota": "day", "rule": "high"}):
        assert (await service.client.post("/api/v1/notifications/test", headers=admin, json=bad)).status_code == 422
    supervisor = await service.login("supervisor")
    r = await service.client.post("/api/v1/notifications/test", headers=supervisor, json={"rota": "day"})
    assert r.status_code == 403


def test_audience_now_is_the_rotas_on_call_people_or_the_rules_first_tier() -> None:
    from zoneinfo import ZoneInfo

    policy = _policy("ann", "bob", "mon")
    at = datetime(2025, 6, 4, 12, 0).astimezone(ZoneInfo("UTC"))  # a Wednesday
    zone = ZoneInfo("UTC")
    day = rules.audience_now(policy, rota="day", at=at, zone=zone, role_users={})
    assert day == rules.Audience(("ann", "bob"))
    assert rules.audience_now(policy, rota="quiet", at=at, zone=zone, role_users={}) == rules.Audience(())
    assert rules.audience_now(policy, rule="high", at=at, zone=zone, role_users={}) == \
        rules.Audience(("ann", "bob"), ("email",))
    swap = rules.Override("day", at - timedelta(hours=1), at + timedelta(hours=1), ("cy",))
    assert rules.audience_now(policy, rule="high", overrides=[swap], at=at, zone=zone,
                              role_users={}).users == ("cy",)
    assert rules.audience_now(policy, rule="none", at=at, zone=zone, role_users={}) is None
    assert rules.audience_now(policy, rota="none", at=at, zone=zone, role_users={}) is None
