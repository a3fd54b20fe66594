"""Contact points over the API: one's own or an admin's, the rules as problems, never deleted, every change audited
once; the test send to a real SMTP server and a real webhook receiver, recorded on the contact point and audited."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from app import db
from app.auth.principal import Role, cli_principal
from app.notify import contacts
from app.notify.channels import verify_signature
from tests.api.conftest import Service, running_service
from tests.notify.support import SMTPServer, WebhookReceiver

SECRET = "api-test-webhook-secret"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
async def service(db_dsn: str, tmp_path_factory: pytest.TempPathFactory, smtp: SMTPServer,
                  hooks: WebhookReceiver) -> AsyncIterator[Service]:
    async with running_service(db_dsn, tmp_path_factory.mktemp("contacts"), **smtp.settings(),
                               webhook_secret=SecretStr(SECRET), webhook_timeout=2.0,
                               public_url="https://culturectl.site") as svc:
        yield svc


async def _audit(service: Service, entity_id: int) -> list[dict[str, Any]]:
    conn = await db.connect(service.dsn)
    try:
        rows = await conn.fetch("SELECT action, actor_name, old, new, reason FROM audit_log WHERE entity_type = "
                                "'contact_point' AND entity_id = $1 ORDER BY seq", str(entity_id))
    finally:
        await conn.close()
    return [{**dict(r), "old": json.loads(r["old"]) if r["old"] else None, "new": json.loads(r["new"])} for r in rows]


def _points(username: str) -> str:
    return f"/api/v1/users/{username}/contact-points"


async def test_a_user_adds_lists_and_disables_their_own(service: Service) -> None:
    _, me, _, headers = await service.user(Role.OPERATOR)
    r = await service.client.post(_points(me), headers=headers,
                                  json={"kind": "sms", "address": "+41 79 123 45 67", "label": "work phone"})
    assert r.status_code == 201, r.text
    cp = r.json()
    assert (cp["username"], cp["kind"], cp["address"], cp["format"], cp["enabled"]) == (
        me, "sms", "+41791234567", "generic", True)
    assert cp["last_test_at"] is None

    r = await service.client.get(_points(me), headers=headers)
    assert r.status_code == 200 and [c["id"] for c in r.json()] == [cp["id"]]

    r = await service.client.patch(f"/api/v1/contact-points/{cp['id']}", headers=headers, json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = await service.client.patch(f"/api/v1/contact-points/{cp['id']}", headers=headers, json={"enabled": False})
    assert r.status_code == 200  # nothing changed: nothing audited

    create, update = await _audit(service, cp["id"])
    assert (create["action"], create["actor_name"], create["old"]) == ("contact_point.create", me, None)
    assert create["new"] == {"username": me, "kind": "sms", "address": "+41791234567", "format": "generic",
                             "label": "work phone", "enabled": True}
    assert (update["action"], update["reason"]) == ("contact_point.update", "changed by the user")
    assert (update["old"]["enabled"], update["new"]["enabled"]) == (True, False)

    conn = await db.connect(service.dsn)
    try:
        assert await contacts.for_users(conn, [me]) == []  # disabled: the sender leaves it out
    finally:
        await conn.close()


async def test_others_are_refused_an_admin_may_with_a_reason(service: Service) -> None:
    _, owner, _, owner_headers = await service.user(Role.SUPERVISOR)
    r = await service.client.post(_points(owner), headers=owner_headers,
                                  json={"kind": "email", "address": "owner@site.example"})
    assert r.status_code == 201, r.text
    cp_id = r.json()["id"]
    other = await service.login(Role.QA)
    for method, path, body in (("GET", _points(owner), None),
                               ("POST", _points(owner), {"kind": "email", "address": "x@site.example"}),
                               ("PATCH", f"/api/v1/contact-points/{cp_id}", {"label": "mine now"}),
                               ("POST", f"/api/v1/contact-points/{cp_id}/test", None)):
        r = await service.client.request(method, path, headers=other, json=body)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["rule"] == "own-contact-points" and r.json()["role"] == "qa"
    _, _, key_headers = await service.api_key(Role.AUTOMATION)
    r = await service.client.get(_points(owner), headers=key_headers)
    assert r.status_code == 403 and "API keys" in r.json()["detail"]

    admin = await service.login(Role.ADMIN)
    assert [c["id"] for c in (await service.client.get(_points(owner), headers=admin)).json()] == [cp_id]
    r = await service.client.patch(f"/api/v1/contact-points/{cp_id}", headers=admin, json={"label": "desk"})
    assert r.status_code == 422 and r.json()["rule"] == "reason-required"
    r = await service.client.patch(f"/api/v1/contact-points/{cp_id}", headers=admin,
                                   json={"label": "desk", "reason": "the user asked by phone"})
    assert r.status_code == 200 and r.json()["label"] == "desk"
    assert (await _audit(service, cp_id))[-1]["reason"] == "the user asked by phone"
    r = await service.client.get(_points("no-such-user"), headers=admin)
    assert r.status_code == 404


@pytest.mark.parametrize(("body", "status", "rule", "field"), [
    ({"kind": "email", "address": "not an address"}, 422, "email-address", "address"),
    ({"kind": "voice", "address": "0791234567"}, 422, "e164-phone", "address"),
    ({"kind": "webhook", "address": "ftp://x.example/y"}, 422, "webhook-url", "address"),
    ({"kind": "email", "address": "a@site.example", "format": "slack"}, 422, "format-generic", "format"),
    ({"kind": "webhook", "address": "https://events.pagerduty.com/v2/enqueue", "format": "pagerduty"}, 422,
     "pagerduty-routing-key", "address"),
])
async def test_the_rules_answer_as_problems(service: Service, body: dict[str, Any], status: int, rule: str,
                                            field: str) -> None:
    _, me, _, headers = await service.user(Role.OPERATOR)
    r = await service.client.post(_points(me), headers=headers, json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert (r.json()["rule"], r.json()["field"]) == (rule, field)


async def test_unknown_fields_and_duplicates_are_refused(service: Service) -> None:
    _, me, _, headers = await service.user(Role.OPERATOR)
    body = {"kind": "email", "address": "dup@site.example"}
    r = await service.client.post(_points(me), headers=headers, json={**body, "username": "someone-else"})
    assert r.status_code == 422 and "username" in r.text
    assert (await service.client.post(_points(me), headers=headers, json=body)).status_code == 201
    r = await service.client.post(_points(me), headers=headers, json=body)
    assert r.status_code == 409 and r.json()["type"].endswith("contact-point-exists")


async def test_test_send_by_email_is_recorded_and_audited(service: Service, smtp: SMTPServer) -> None:
    _, me, _, headers = await service.user(Role.OPERATOR)
    address = f"{me}@site.example"
    cp = (await service.client.post(_points(me), headers=headers, json={"kind": "email", "address": address})).json()
    before = len(smtp.messages)
    r = await service.client.post(f"/api/v1/contact-points/{cp['id']}/test", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and body["detail"].startswith("250 2.0.0 OK")
    assert body["contact_point"]["last_test_result"] == f"ok: {body['detail']}"
    assert body["contact_point"]["last_test_at"] is not None
    mail = smtp.messages[before]
    assert mail.rcpt_tos == [address] and mail.message["Subject"] == "culturectl: test notification"
    assert f"at the request of {me}" in mail.text and "https://culturectl.site" in mail.text
    assert mail.message["Message-ID"].startswith(f"<test-{cp['id']}-")
    test = (await _audit(service, cp["id"]))[-1]
    assert (test["action"], test["actor_name"]) == ("contact_point.test", me)
    assert test["new"]["ok"] is True and test["new"]["address"] == address
    assert test["new"]["last_test_result"] == f"ok: {body['detail']}"
    assert test["old"] == {"last_test_at": None, "last_test_result": None}


async def test_test_send_to_a_webhook_and_a_failing_one(service: Service, hooks: WebhookReceiver) -> None:
    _, me, _, headers = await service.user(Role.SUPERVISOR)
    cp = (await service.client.post(_points(me), headers=headers,
                                    json={"kind": "webhook", "address": hooks.url("/me"), "format": "generic"})).json()
    hooks.status = 200
    r = await service.client.post(f"/api/v1/contact-points/{cp['id']}/test", headers=headers)
    assert r.status_code == 200 and r.json()["detail"] == "HTTP 200", r.text
    req = hooks.requests[-1]
    assert verify_signature(SECRET, req.headers["x-culturectl-timestamp"], req.body,
                            req.headers["x-culturectl-signature"])
    assert req.json()["kind"] == "test" and req.headers["idempotency-key"].startswith(f"test-{cp['id']}-")

    hooks.status = 500
    try:
        r = await service.client.post(f"/api/v1/contact-points/{cp['id']}/test", headers=headers)
    finally:
        hooks.status = 200
    assert r.status_code == 502, r.text
    problem = r.json()
    assert problem["rule"] == "test-send" and problem["permanent"] is False and "HTTP 500" in problem["detail"]
    last = (await _audit(service, cp["id"]))[-1]
    assert last["action"] == "contact_point.test" and last["new"]["ok"] is False
    assert last["new"]["last_test_result"].startswith("failed: the generic webhook at 127.0.0.1")
    listed = (await service.client.get(_points(me), headers=headers)).json()
    assert listed[0]["last_test_result"].startswith("failed: ")


async def test_a_channel_without_settings_answers_503_and_records_nothing(service: Service) -> None:
    _, me, _, headers = await service.user(Role.OPERATOR)
    cp = (await service.client.post(_points(me), headers=headers,
                                    json={"kind": "voice", "address": "+15551234567"})).json()
    before = await _audit(service, cp["id"])
    r = await service.client.post(f"/api/v1/contact-points/{cp['id']}/test", headers=headers)
    assert r.status_code == 503 and r.json()["rule"] == "channel-configured", r.text
    assert "CULTURECTL_VOICE_URL" in r.json()["detail"]
    assert await _audit(service, cp["id"]) == before
    r = await service.client.post("/api/v1/contact-points/999999/test", headers=headers)
    assert r.status_code == 404


async def test_for_users_gives_enabled_points_of_active_users(service: Service) -> None:
    a = await service.create_user(Role.OPERATOR)
    b = await service.create_user(Role.OPERATOR)
    conn = await db.connect(service.dsn)
    try:
        actor = cli_principal()
        mail = await contacts.create(conn, username=a[1], kind="email", address="a@site.example", actor=actor)
        sms = await contacts.create(conn, username=a[1], kind="sms", address="+41791234567", actor=actor)
        await contacts.create(conn, username=a[1], kind="voice", address="+41791234567", enabled=False, actor=actor)
        other = await contacts.create(conn, username=b[1], kind="email", address="b@site.example", actor=actor)
        assert [c.id for c in await contacts.for_users(conn, [a[1], b[1]])] == [mail.id, sms.id, other.id]
        assert [c.id for c in await contacts.for_users(conn, [a[1], b[1]], kinds=["sms"])] == [sms.id]
        assert mail.target().kind == "email" and mail.target().address == "a@site.example"
        await conn.execute("UPDATE users SET disabled = true WHERE username = $1", b[1])
        assert [c.id for c in await contacts.for_users(conn, [b[1]])] == []
    finally:
        await conn.close()
