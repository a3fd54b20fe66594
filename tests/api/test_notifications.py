"""The notifications API: the policy's versions (audited, bad documents refused with the rule and field), on-call
overrides and who is on call, the episodes of an alarm; and the remote acknowledgement page a link opens: the
recipient's password and a comment acknowledge once, a wrong password does not, a used or unknown link is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app import db
from app.auth.principal import Role
from app.notify import outbox
from app.runtime import Runtime
from drivers.base import DeviceState
from tests.api.conftest import Service

ROTA_POLICY: dict[str, Any] = {
    "rotas": [{"name": "nights", "shifts": [
        {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "18:00", "end": "08:00",
         "users": ["night-owl"]},
        {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "08:00", "end": "18:00",
         "users": ["day-lark"]}]}],
    "rules": [{"name": "lost-devices", "match": {"kinds": ["comm_loss"]},
               "tiers": [{"notify": {"rotas": ["nights"]}}], "notify_acknowledged": True}],
}


async def _people(service: Service) -> None:
    """The users the policy names (a policy naming someone without an account is refused)."""
    for name in ("night-owl", "day-lark", "stand-in"):
        if name not in service.users:
            await service.create_user(Role.OPERATOR, username=name)


@pytest.fixture
async def rota_policy(service: Service) -> None:
    """ROTA_POLICY in force (each test may run alone)."""
    await _people(service)
    r = await service.client.get("/api/v1/notifications/policy", headers=await service.login(Role.OPERATOR))
    if r.status_code != 200 or r.json()["content"] != ROTA_POLICY:
        r = await service.client.put("/api/v1/notifications/policy", headers=await service.login(Role.ADMIN),
                                     json={"policy": ROTA_POLICY, "reason": "the test's rota"})
        assert r.status_code == 201, r.text


def runtime(service: Service) -> Runtime:
    rt: Runtime = service.app.state.runtime
    return rt


async def test_a_policy_is_versioned_and_audited_and_a_bad_one_refused_naming_the_field(service: Service) -> None:
    sup = await service.login(Role.SUPERVISOR)
    r = await service.client.put("/api/v1/notifications/policy", headers=sup,
                                 json={"policy": ROTA_POLICY, "reason": "before the accounts exist"})
    assert r.status_code == 404 and r.json()["rule"] == "unknown_user", r.text
    assert set(r.json()["users"]) == {"night-owl", "day-lark"}
    await _people(service)
    r = await service.client.put("/api/v1/notifications/policy", headers=sup,
                                 json={"policy": ROTA_POLICY, "reason": "night rota for lost devices"})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["content"]["rules"][0]["name"] == "lost-devices"
    r = await service.client.put("/api/v1/notifications/policy", headers=sup,
                                 json={"policy": {**ROTA_POLICY, "rules": []}, "reason": "second"})
    assert r.status_code == 201 and r.json()["version"] == first["version"] + 1
    r = await service.client.get("/api/v1/notifications/policy/versions", headers=sup)
    assert [v["reason"] for v in r.json()[:2]] == ["second", "night rota for lost devices"]
    r = await service.client.get("/api/v1/audit", headers=await service.login(Role.QA),
                                 params={"entity_type": "notification_policy"})
    assert r.status_code == 200 and {e["action"] for e in r.json()["items"]} == {"notification_policy.change"}

    r = await service.client.put("/api/v1/notifications/policy", headers=sup, json={"policy": {"rotas": [{
        "name": "r", "shifts": [{"days": ["mon"], "start": "18:00+01:00", "end": "08:00", "users": ["day-lark"]}]}]},
        "reason": "x"})
    assert r.status_code == 422 and "without an offset" in r.text  # shifts are in the site's time zone
    bad = {"rules": [{"name": "x", "tiers": [{"notify": {"rotas": ["weekends"]}}]}], "rotas": []}
    r = await service.client.put("/api/v1/notifications/policy", headers=sup, json={"policy": bad, "reason": "x"})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "unknown rota weekends" in r.text
    r = await service.client.put("/api/v1/notifications/policy", headers=sup, json={
        "policy": {"rules": [{"name": "x", "delay_min": -5, "tiers": [{"notify": {"users": ["bob"]}}]}]},
        "reason": "x"})
    assert r.status_code == 422 and "delay_min" in r.text
    r = await service.client.put("/api/v1/notifications/policy", headers=await service.login(Role.OPERATOR),
                                 json={"policy": ROTA_POLICY, "reason": "x"})
    assert r.status_code == 403
    r = await service.client.put("/api/v1/notifications/policy", headers=sup,
                                 json={"policy": ROTA_POLICY, "reason": "restore the rule"})
    assert r.status_code == 201


async def test_overrides_say_who_is_on_call_instead_of_the_rota(service: Service, rota_policy: None) -> None:
    sup = await service.login(Role.SUPERVISOR)
    at = datetime(2026, 12, 24, 23, 0, tzinfo=UTC)
    r = await service.client.get("/api/v1/notifications/oncall", headers=sup, params={"at": at.isoformat()})
    assert r.status_code == 200 and r.json()[0]["users"] == ["night-owl"]
    body = {"rota": "nights", "starts_at": "2026-12-24T18:00:00+01:00", "ends_at": "2026-12-26T08:00:00+01:00",
            "users": ["stand-in"], "reason": "Christmas swap"}
    r = await service.client.post("/api/v1/notifications/overrides", headers=sup, json=body)
    assert r.status_code == 201, r.text
    override = r.json()
    r = await service.client.get("/api/v1/notifications/oncall", headers=sup, params={"at": at.isoformat()})
    assert r.json()[0]["users"] == ["stand-in"] and r.json()[0]["override_id"] == override["id"]
    r = await service.client.post(f"/api/v1/notifications/overrides/{override['id']}/revoke", headers=sup,
                                  json={"reason": "swap cancelled"})
    assert r.status_code == 200 and r.json()["revoked_by"].endswith(r.json()["revoked_by"].split(":")[-1])
    r = await service.client.get("/api/v1/notifications/oncall", headers=sup, params={"at": at.isoformat()})
    assert r.json()[0]["users"] == ["night-owl"]
    r = await service.client.post(f"/api/v1/notifications/overrides/{override['id']}/revoke", headers=sup,
                                  json={"reason": "again"})
    assert r.status_code == 409 and r.json()["rule"] == "override_revoked"


@pytest.mark.parametrize(("change", "status", "rule", "field"), [
    ({"rota": "weekends"}, 404, "unknown_rota", "rota"),
    ({"users": ["no-such-user"]}, 404, "unknown_user", "users"),
    ({"ends_at": "2026-12-24T17:00:00+01:00"}, 422, "override_window", "ends_at"),
])
async def test_a_bad_override_is_refused_naming_the_rule_and_field(service: Service, rota_policy: None,
                                                                   change: dict[str, Any], status: int, rule: str,
                                                                   field: str) -> None:
    sup = await service.login(Role.SUPERVISOR)
    body = {"rota": "nights", "starts_at": "2026-12-24T18:00:00+01:00", "ends_at": "2026-12-26T08:00:00+01:00",
            "users": ["night-owl"], "reason": "x", **change}
    r = await service.client.post("/api/v1/notifications/overrides", headers=sup, json=body)
    assert r.status_code == status, r.text
    assert (r.json()["rule"], r.json()["field"]) == (rule, field)


async def test_an_override_without_a_utc_offset_is_refused(service: Service) -> None:
    r = await service.client.post("/api/v1/notifications/overrides", headers=await service.login(Role.SUPERVISOR),
                                  json={"rota": "nights", "starts_at": "2026-12-24T18:00:00",
                                        "ends_at": "2026-12-26T08:00:00+01:00", "users": ["night-owl"],
                                        "reason": "x"})
    assert r.status_code == 422 and "starts_at" in r.text


async def _on_call(service: Service) -> tuple[str, str]:
    """A new operator put on call for the rota (an override around the service clock's now): (name, password)."""
    now = runtime(service).clock.now()
    _, owl, password = await service.create_user(Role.OPERATOR)
    r = await service.client.post("/api/v1/notifications/overrides", headers=await service.login(Role.SUPERVISOR),
                                  json={"rota": "nights", "starts_at": (now - timedelta(days=1)).isoformat(),
                                        "ends_at": (now + timedelta(days=1)).isoformat(), "users": [owl],
                                        "reason": "this test's on-call"})
    assert r.status_code == 201, r.text
    return owl, password


async def _delivery_link(service: Service, username: str) -> tuple[str, str]:
    """A comm-loss alarm of the first device planned and expanded for `username`: (alarm id, the link's token)."""
    rt = runtime(service)
    assert rt.alarms is not None and rt.sender is not None
    device = rt.devices[0].name
    alarm_id = f"{device}:comm_loss"
    rt.alarms.on_device_state(device, DeviceState.ONLINE, rt.clock.now())
    await rt.alarms.flush()
    conn = await db.connect(service.dsn)
    try:
        await conn.execute("INSERT INTO contact_point (username, kind, address, created_at, updated_at) VALUES "
                           "($1, 'email', $2, now(), now()) ON CONFLICT DO NOTHING", username,
                           f"{username}@site.example")
    finally:
        await conn.close()
    rt.alarms.on_device_state(device, DeviceState.OFFLINE, rt.clock.now())
    await rt.alarms.flush()
    await rt.sender.expand_due()  # nobody listens on the SMTP side here: the link is what this test needs
    conn = await db.connect(service.dsn)
    try:
        row = await conn.fetchrow(
            "SELECT d.notification_id, d.contact_point_id FROM notification_delivery d JOIN notification n ON n.id = "
            "d.notification_id WHERE n.alarm_id = $1 AND d.username = $2 ORDER BY d.id DESC LIMIT 1", alarm_id,
            username)
    finally:
        await conn.close()
    assert row is not None
    return alarm_id, rt.sender.token(row["notification_id"], row["contact_point_id"])


async def test_the_remote_link_acknowledges_once_with_the_recipients_password_and_a_comment(
        service: Service, rota_policy: None) -> None:
    rt = runtime(service)
    assert rt.alarms is not None
    # who the rota names depends on the service clock's hour: an override puts this test's user on call
    owl, owl_password = await _on_call(service)
    alarm_id, token = await _delivery_link(service, owl)

    page = await service.client.get(f"/ack/{token}")
    assert page.status_code == 200 and f"Acknowledge as <strong>{owl}</strong>" in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["referrer-policy"] == "no-referrer"
    r = await service.client.post(f"/ack/{token}", content=b"password=wrong-password&comment=on+my+way",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 401 and "is not right" in r.text
    r = await service.client.post(f"/ack/{token}", content=f"password={owl_password}&comment=".encode(),
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "comment is required" in r.text
    assert rt.alarms.alarms[alarm_id].state.status.value == "active_unack"

    form = f"password={owl_password}&comment=checked+the+cable".encode()
    r = await service.client.post(f"/ack/{token}", content=form,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "Acknowledged by" in r.text, r.text
    assert rt.alarms.alarms[alarm_id].state.status.value == "active_ack"
    again = await service.client.post(f"/ack/{token}", content=form,
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert again.status_code == 410 and "used already" in again.text
    assert (await service.client.get(f"/ack/{'x' * 43}")).status_code == 404

    conn = await db.connect(service.dsn)
    try:
        events = await conn.fetch("SELECT reason, actor, comment FROM alarm_event WHERE alarm_id = $1 ORDER BY id "
                                  "DESC LIMIT 3", alarm_id)
        audit = await conn.fetchrow("SELECT actor_name, reason, client FROM audit_log WHERE action = "
                                    "'alarm.acknowledge' AND entity_id = $1 ORDER BY seq DESC LIMIT 1", alarm_id)
        used = await outbox.by_token(conn, token)
    finally:
        await conn.close()
    reasons = [e["reason"] for e in events]
    assert "acknowledge" in reasons and any(r.startswith("acknowledged through the remote link") for r in reasons)
    assert {e["actor"] for e in events if e["reason"] == "acknowledge"} == {f"user:{owl}"}
    assert audit is not None and audit["actor_name"] == owl and audit["reason"] == "checked the cable"
    assert "remote acknowledgement link" in audit["client"]
    assert used is not None and used["ack_used_at"] is not None


async def test_a_link_of_an_earlier_activation_or_after_three_wrong_passwords_acknowledges_nothing(
        service: Service, rota_policy: None) -> None:
    rt = runtime(service)
    assert rt.alarms is not None
    owl, password = await _on_call(service)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    alarm_id, first = await _delivery_link(service, owl)
    for _ in range(3):
        r = await service.client.post(f"/ack/{first}", content=b"password=guess&comment=x", headers=form)
    assert r.status_code == 410 and "no longer works" in r.text
    r = await service.client.post(f"/ack/{first}", content=f"password={password}&comment=x".encode(), headers=form)
    assert r.status_code == 410 and rt.alarms.alarms[alarm_id].state.status.value == "active_unack"

    # the link is for one activation: after the device returned and was lost again, the old link is refused
    _, second = await _delivery_link(service, owl)
    r = await service.client.get(f"/ack/{second}")
    assert r.status_code == 200
    _, third = await _delivery_link(service, owl)
    r = await service.client.get(f"/ack/{second}")
    assert r.status_code == 410 and "earlier activation" in r.text and alarm_id not in r.text
    r = await service.client.post(f"/ack/{third}", content=f"password={password}&comment=ok".encode(), headers=form)
    assert r.status_code == 200, r.text


async def test_the_episodes_of_an_alarm_show_notices_and_deliveries(service: Service, rota_policy: None) -> None:
    rt = runtime(service)
    assert rt.alarms is not None
    owl, _ = await _on_call(service)
    alarm_id, _ = await _delivery_link(service, owl)
    r = await service.client.get("/api/v1/notifications/episodes", headers=await service.login(Role.OPERATOR),
                                 params={"alarm_id": alarm_id, "open": "true"})
    assert r.status_code == 200
    eps = r.json()
    assert len(eps) == 1 and eps[0]["rule"] == "lost-devices" and eps[0]["closed_at"] is None
    note = eps[0]["notifications"][0]
    assert note["kind"] == "alert" and note["status"] == "expanded" and note["deliveries"]
    d = note["deliveries"][0]
    r = await service.client.get(f"/api/v1/notifications/deliveries/{d['id']}",
                                 headers=await service.login(Role.OPERATOR))
    assert r.status_code == 200 and r.json()["channel"] == "email"
    r = await service.client.get("/api/v1/notifications/deliveries/999999", headers=await service.login(Role.QA))
    assert r.status_code == 404 and r.json()["rule"] == "unknown_delivery"
