"""The channels against real servers on 127.0.0.1: aiosmtpd (plain, STARTTLS and implicit TLS with a certificate
made here, login over TLS) and an HTTP receiver (signatures, each webhook format's body, SMS and voice provider
bodies, and which failures are permanent)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.notify.channels import (
    ChannelNotConfigured,
    Channels,
    DeliveryError,
    Message,
    Target,
    verify_signature,
)
from app.settings import Settings
from tests.notify.support import SMTPServer, TLSFiles, WebhookReceiver, tls_files
from tests.support import free_port

SECRET = "receiver-shared-secret"
PASSWORD = "Smtp-Pass-4-Notices!"
ALERT = Message(id="culturectl-delivery-41", kind="alert", subject="[HIGH] incubator-1 temperature HH",
                text="incubator-1 temperature 39.4 C above 39.0 C\nAcknowledge: https://culturectl.site/ack/tok",
                priority="high", alarm_id="incubator-1.temperature:limit",
                ack_url="https://culturectl.site/ack/tok",
                facts={"id": "incubator-1.temperature:limit", "device": "incubator-1",
                       "channel": "incubator-1.temperature", "priority": "high", "status": "active_unack",
                       "value": 39.4, "active_since": "2026-12-01T03:02:00Z", "tier": 1})


def settings(**kw: Any) -> Settings:
    kw.setdefault("webhook_secret", SecretStr(SECRET))
    kw.setdefault("webhook_timeout", 2.0)
    return Settings(data_dir=Path("/nonexistent"), **kw)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def hooks() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(hooks: WebhookReceiver) -> WebhookReceiver:
    hooks.status, hooks.hang = 200, False
    return hooks


# --------------------------------------------------------------------------------------------------
# Email
# --------------------------------------------------------------------------------------------------


async def test_plain_smtp_delivers_the_message_with_its_id_and_priority() -> None:
    with SMTPServer() as smtp:
        detail = await Channels(settings(**smtp.settings())).send(Target("email", "oncall@site.example"), ALERT)
        [mail] = smtp.wait(1)
    assert detail.startswith("250 2.0.0 OK queued as"), detail
    assert mail.rcpt_tos == ["oncall@site.example"] and mail.mail_from == "culturectl@site.example"
    msg = mail.message
    assert msg["Message-ID"] == "<culturectl-delivery-41@site.example>"
    assert msg["Subject"] == ALERT.subject and msg["To"] == "oncall@site.example"
    assert msg["X-Priority"].startswith("1") and msg["Importance"] == "high"
    assert msg["X-Culturectl-Priority"] == "high" and msg["X-Culturectl-Alarm"] == ALERT.alarm_id
    assert msg["Auto-Submitted"] == "auto-generated"
    assert "https://culturectl.site/ack/tok" in mail.text and not mail.tls


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_with_the_sites_ca_and_a_login(tls: TLSFiles, security: str) -> None:
    with SMTPServer(security, tls=tls, login=("culturectl", PASSWORD)) as smtp:  # type: ignore[arg-type]
        detail = await Channels(settings(**smtp.settings())).send(Target("email", "qa@site.example"), ALERT)
        [mail] = smtp.wait(1)
    assert detail.startswith("250"), detail
    assert mail.tls and mail.login == "culturectl"


async def test_a_certificate_the_site_does_not_trust_is_permanent(tls: TLSFiles) -> None:
    with SMTPServer("starttls", tls=tls) as smtp:
        s = {**smtp.settings(), "smtp_ca_file": None}  # the system's CAs: they never signed this one
        with pytest.raises(DeliveryError) as err:
            await Channels(settings(**s)).send(Target("email", "qa@site.example"), ALERT)
        assert smtp.messages == []
    assert err.value.permanent and "certificate" in str(err.value)


async def test_a_wrong_password_is_permanent_and_never_shown(tls: TLSFiles) -> None:
    wrong = "Wrong-Secret-Password-9"
    with SMTPServer("starttls", tls=tls, login=("culturectl", PASSWORD)) as smtp:
        s = {**smtp.settings(), "smtp_password": SecretStr(wrong)}
        with pytest.raises(DeliveryError) as err:
            await Channels(settings(**s)).send(Target("email", "qa@site.example"), ALERT)
        assert smtp.messages == []
    assert err.value.permanent
    assert "refused the login of 'culturectl'" in str(err.value) and "535" in str(err.value)
    assert wrong not in str(err.value) and wrong not in repr(err.value) and PASSWORD not in str(err.value)


async def test_a_refused_recipient_is_permanent() -> None:
    with SMTPServer() as smtp:
        smtp.refuse.add("gone@site.example")
        with pytest.raises(DeliveryError) as err:
            await Channels(settings(**smtp.settings())).send(Target("email", "gone@site.example"), ALERT)
    assert err.value.permanent and "550" in str(err.value) and "gone@site.example" in str(err.value)


async def test_an_unreachable_smtp_server_is_transient() -> None:
    s = settings(smtp_host="127.0.0.1", smtp_port=free_port(), smtp_security="none", smtp_timeout=2.0)
    with pytest.raises(DeliveryError) as err:
        await Channels(s).send(Target("email", "qa@site.example"), ALERT)
    assert not err.value.permanent and "cannot be reached" in str(err.value)


def test_email_configuration_reasons() -> None:
    assert Channels(settings()).not_configured("email") == "no SMTP server (CULTURECTL_SMTP_HOST)"
    assert "without CULTURECTL_SMTP_PASSWORD" in str(
        Channels(settings(smtp_host="mail", smtp_username="u")).not_configured("email"))
    unencrypted = Channels(settings(smtp_host="mail", smtp_username="u", smtp_password=SecretStr("p"),
                                    smtp_security="none"))
    assert "unencrypted" in str(unencrypted.not_configured("email"))
    assert Channels(settings(smtp_host="mail")).configured("email")


async def test_an_unconfigured_channel_raises_permanently() -> None:
    with pytest.raises(ChannelNotConfigured) as err:
        await Channels(settings()).send(Target("email", "qa@site.example"), ALERT)
    assert err.value.permanent and err.value.kind == "email"
    with pytest.raises(ChannelNotConfigured):
        await Channels(settings(webhook_secret=None)).send(Target("webhook", "http://127.0.0.1:1/x"), ALERT)


# --------------------------------------------------------------------------------------------------
# Webhooks
# --------------------------------------------------------------------------------------------------


async def test_generic_webhook_is_signed_and_carries_the_idempotency_key(receiver: WebhookReceiver) -> None:
    before = len(receiver.requests)
    detail = await Channels(settings()).send(Target("webhook", receiver.url("/culturectl")), ALERT)
    req = receiver.requests[before]
    assert detail == "HTTP 200"
    assert req.path == "/culturectl" and req.headers["content-type"].startswith("application/json")
    assert req.headers["idempotency-key"] == ALERT.id
    ts, sig = req.headers["x-culturectl-timestamp"], req.headers["x-culturectl-signature"]
    assert sig.startswith("sha256=") and verify_signature(SECRET, ts, req.body, sig)
    assert not verify_signature("another-secret", ts, req.body, sig)
    assert not verify_signature(SECRET, ts, req.body.replace(b"39.4", b"36.4"), sig)
    assert not verify_signature(SECRET, str(int(ts) - 1), req.body, sig)
    assert not verify_signature(SECRET, ts, req.body, sig, now=int(ts) + 3600)  # a replay an hour later
    body = req.json()
    assert {k: body[k] for k in ("id", "kind", "subject", "text", "priority", "ack_url")} == {
        "id": ALERT.id, "kind": "alert", "subject": ALERT.subject, "text": ALERT.text, "priority": "high",
        "ack_url": ALERT.ack_url}
    assert body["alarm"] == dict(ALERT.facts) and body["sent_at"].endswith("Z")


async def test_slack_teams_and_pagerduty_bodies(receiver: WebhookReceiver) -> None:
    ch = Channels(settings(public_url="https://culturectl.site"))
    before = len(receiver.requests)
    await ch.send(Target("webhook", receiver.url("/services/T1/B2/slacktoken"), "slack"), ALERT)
    await ch.send(Target("webhook", receiver.url("/teams"), "teams"), ALERT)
    key = "R0123456789ABCDEFGHIJKLMNOPQRSTU"
    await ch.send(Target("webhook", receiver.url("/v2/enqueue") + "#" + key, "pagerduty"), ALERT)
    slack, teams, pagerduty = receiver.requests[before:before + 3]
    for req in (slack, teams, pagerduty):
        assert verify_signature(SECRET, req.headers["x-culturectl-timestamp"], req.body,
                                req.headers["x-culturectl-signature"])

    s = slack.json()
    assert s["text"].startswith(ALERT.subject)
    assert [b["type"] for b in s["blocks"]] == ["header", "section", "section", "actions"]
    assert s["blocks"][3]["elements"][0]["url"] == ALERT.ack_url

    t = teams.json()
    assert t["type"] == "message"
    [att] = t["attachments"]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = att["content"]
    assert card["type"] == "AdaptiveCard" and card["body"][0]["text"] == ALERT.subject
    assert {"title": "device", "value": "incubator-1"} in card["body"][2]["facts"]
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Acknowledge", "url": ALERT.ack_url}]

    assert pagerduty.path == "/v2/enqueue"  # the routing key stays out of the URL
    p = pagerduty.json()
    assert (p["routing_key"], p["event_action"], p["dedup_key"]) == (key, "trigger", ALERT.alarm_id)
    assert p["payload"]["severity"] == "critical" and p["payload"]["summary"] == ALERT.subject
    assert p["payload"]["source"] == "culturectl.site" and p["payload"]["component"] == "incubator-1"
    assert p["links"] == [{"href": ALERT.ack_url, "text": "Acknowledge in culturectl"}]

    for kind, action in (("acknowledged", "acknowledge"), ("returned", "resolve")):
        notice = Message(id=f"n-{kind}", kind=kind, subject="s", text="t", priority="high", alarm_id=ALERT.alarm_id)
        await ch.send(Target("webhook", receiver.url("/v2/enqueue") + "#" + key, "pagerduty"), notice)
        assert receiver.requests[-1].json() == {"routing_key": key, "event_action": action,
                                                "dedup_key": ALERT.alarm_id}


@pytest.mark.parametrize(("status", "permanent"), [(500, False), (503, False), (429, False), (408, False),
                                                   (400, True), (404, True), (410, True), (301, True)])
async def test_which_http_answers_are_permanent(receiver: WebhookReceiver, status: int, permanent: bool) -> None:
    receiver.status = status
    url = receiver.url("/services/T1/B2/very-secret-token")
    with pytest.raises(DeliveryError) as err:
        await Channels(settings()).send(Target("webhook", url, "slack"), ALERT)
    assert err.value.permanent is permanent
    assert f"HTTP {status}" in str(err.value) and "very-secret-token" not in str(err.value)
    assert f"127.0.0.1:{receiver.port}" in str(err.value)


async def test_a_webhook_that_does_not_answer_in_time_is_transient(receiver: WebhookReceiver) -> None:
    receiver.hang = True
    with pytest.raises(DeliveryError) as err:
        await Channels(settings(webhook_timeout=0.3)).send(Target("webhook", receiver.url("/slow")), ALERT)
    assert not err.value.permanent and "did not answer within 0.3 s" in str(err.value)


async def test_an_unreachable_webhook_is_transient() -> None:
    with pytest.raises(DeliveryError) as err:
        await Channels(settings()).send(Target("webhook", f"http://127.0.0.1:{free_port()}/x"), ALERT)
    assert not err.value.permanent and "cannot be reached" in str(err.value)


# --------------------------------------------------------------------------------------------------
# SMS and voice
# --------------------------------------------------------------------------------------------------


async def test_sms_and_voice_go_to_the_provider_with_its_token(receiver: WebhookReceiver) -> None:
    ch = Channels(settings(sms_url=receiver.url("/sms"), sms_token=SecretStr("sms-token"),
                           voice_url=receiver.url("/voice"), voice_token=SecretStr("voice-token")))
    before = len(receiver.requests)
    assert await ch.send(Target("sms", "+41791234567"), ALERT) == "HTTP 200"
    assert await ch.send(Target("voice", "+41791234567"), ALERT) == "HTTP 200"
    sms, voice = receiver.requests[before:before + 2]
    assert sms.path == "/sms" and sms.headers["authorization"] == "Bearer sms-token"
    assert voice.path == "/voice" and voice.headers["authorization"] == "Bearer voice-token"
    for req in (sms, voice):
        assert verify_signature(SECRET, req.headers["x-culturectl-timestamp"], req.body,
                                req.headers["x-culturectl-signature"])
        assert req.headers["idempotency-key"] == ALERT.id
    body = sms.json()
    assert (body["to"], body["id"], body["ack_url"], body["kind"]) == ("+41791234567", ALERT.id, ALERT.ack_url,
                                                                       "alert")
    assert len(body["text"]) <= 320 and body["text"].endswith(f"Ack: {ALERT.ack_url}")
    spoken = voice.json()["text"]
    assert spoken.startswith("This is culturectl, alarm: [HIGH] incubator-1 temperature HH")
    assert "http" not in spoken


async def test_a_long_subject_is_shortened_for_sms_but_keeps_the_link(receiver: WebhookReceiver) -> None:
    ch = Channels(settings(sms_url=receiver.url("/sms")))
    long = Message(id="x", kind="alert", subject="word " * 200, text="t", priority="medium",
                   ack_url="https://culturectl.site/ack/" + "t" * 43)
    await ch.send(Target("sms", "+15551234567"), long)
    body = json.loads(receiver.requests[-1].body)
    assert len(body["text"]) == 320 and body["text"].endswith(long.ack_url or "")
    assert "authorization" not in receiver.requests[-1].headers  # no token set: none sent


def test_http_channel_configuration_reasons() -> None:
    ch = Channels(settings())
    assert ch.not_configured("sms") == "no sms provider URL (CULTURECTL_SMS_URL)"
    assert ch.not_configured("voice") == "no voice provider URL (CULTURECTL_VOICE_URL)"
    assert ch.configured("webhook")
    assert "CULTURECTL_WEBHOOK_SECRET" in str(Channels(settings(webhook_secret=None)).not_configured("webhook"))
    assert "http(s)" in str(Channels(settings(sms_url="ftp://x")).not_configured("sms"))
