"""The channels a notice goes out on: email (SMTP), webhooks (our JSON, Slack, Teams, PagerDuty), SMS and voice
calls through a provider's HTTP API. One `send(target, message)` per attempt: it answers a short detail for the
attempt record or raises `DeliveryError`, permanent (retrying cannot help) or transient (retry later).

Every HTTP call (webhook, SMS, voice) is signed: `X-Culturectl-Timestamp: <unix seconds>` and
`X-Culturectl-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed with CULTURECTL_WEBHOOK_SECRET>`,
and carries `Idempotency-Key: <message id>` (the same across the retries of one delivery); `verify_signature` is
the receiver's check. Secrets (the SMTP password, the webhook secret, the providers' tokens, the secret parts of a
webhook URL) never appear in a log line, an error or an attempt record: errors name the server by host only.
docs/notifications.md ("Channels") describes each body.
"""

from __future__ import annotations

import asyncio
import base64
import email.policy
import email.utils
import hashlib
import hmac
import json
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from app.settings import Settings

log = logging.getLogger("culturectl.notify")

KINDS: Final = ("email", "sms", "voice", "webhook")
"""Contact point kinds (the contact_point.kind check)."""
WEBHOOK_FORMATS: Final = ("generic", "slack", "teams", "pagerduty")
"""Bodies a webhook contact point can receive; email, SMS and voice use "generic" only."""
MESSAGE_KINDS: Final = ("alert", "acknowledged", "returned", "test")
SMS_MAX_CHARS: Final = 320
VOICE_MAX_CHARS: Final = 500
SIGNATURE_HEADER: Final = "X-Culturectl-Signature"
TIMESTAMP_HEADER: Final = "X-Culturectl-Timestamp"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
SIGNATURE_MAX_AGE_S: Final = 300.0
USER_AGENT: Final = "culturectl-notify/1"


@dataclass(frozen=True)
class Message:
    """One notice as every channel renders it."""

    id: str
    """Stable across the retries of one delivery: the email's Message-ID and the webhooks' Idempotency-Key."""
    kind: str
    """alert, acknowledged, returned or test."""
    subject: str
    text: str
    """Plain text; already holds the acknowledgement link when there is one."""
    priority: str
    """The alarm's priority (advisory, low, medium, high); a test: the priority it pretends."""
    alarm_id: str | None = None
    ack_url: str | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)
    """The alarm as the API shows it (id, channel, device, description, priority, status, value, active_since,
    tier ...), JSON-ready."""


@dataclass(frozen=True)
class Target:
    """Where one delivery goes: a contact point's kind, address and (webhooks) body format."""

    kind: str
    address: str
    format: str = "generic"


class DeliveryError(Exception):
    """An attempt failed. `permanent`: retrying the same message cannot succeed (a refused recipient or login, a
    4xx other than 408/429, an untrusted certificate, a channel that is not configured); else transient (timeouts,
    connection errors, 5xx). The message never holds a secret."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ChannelNotConfigured(DeliveryError):
    """The channel's settings are missing (no SMTP host, no provider URL, no webhook secret ...)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind} is not configured: {reason}", permanent=True)
        self.kind = kind
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signature(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`: the X-Culturectl-Signature header."""
    mac = hmac.new(_key(secret), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: str | bytes, timestamp: str, body: bytes, header: str, *,
                     max_age_s: float | None = SIGNATURE_MAX_AGE_S, now: float | None = None) -> bool:
    """A receiver's check of a signed body: the header matches (constant-time compare) and, unless `max_age_s` is
    None, the timestamp (unix seconds) is within `max_age_s` of `now` (a replayed old body fails)."""
    try:
        ts = timestamp.strip()
        expected = signature(secret, ts, body)
        stamp = int(ts)
    except (UnicodeEncodeError, ValueError):
        return False
    ok = hmac.compare_digest(expected.encode("ascii"), header.strip().encode("utf-8", "replace"))
    if max_age_s is not None:
        ok = ok and abs((time.time() if now is None else now) - stamp) <= max_age_s
    return ok


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def generic_body(message: Message, sent_at: datetime) -> dict[str, Any]:
    """Our own JSON: {id, kind, subject, text, priority, alarm, ack_url, sent_at}."""
    return {
        "id": message.id, "kind": message.kind, "subject": message.subject, "text": message.text,
        "priority": message.priority, "alarm": dict(message.facts) if message.facts else None,
        "ack_url": message.ack_url, "sent_at": sent_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


_FACT_ORDER = ("device", "channel", "description", "priority", "status", "value", "active_since", "tier")


def _facts(message: Message) -> list[tuple[str, str]]:
    """The alarm's facts worth showing, in a stable order, as text."""
    keys = [k for k in _FACT_ORDER if k in message.facts]
    keys += sorted(k for k in message.facts if k not in keys and k != "id")
    out = []
    for k in keys:
        v = message.facts[k]
        if v is None or isinstance(v, Mapping | list | tuple):
            continue
        out.append((k.replace("_", " "), _clip(_one_line(str(v)), 200)))
    return out


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(message: Message) -> dict[str, Any]:
    """A Slack incoming webhook's message: `text` (the notification's fallback) and blocks."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(_one_line(message.subject), 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(_slack_escape(message.text), 3000)}},
    ]
    facts = _facts(message)
    if facts:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": _clip(f"*{_slack_escape(k)}*\n{_slack_escape(v)}", 2000)} for k, v in facts[:10]
        ]})
    if message.ack_url:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Acknowledge"}, "url": message.ack_url,
             "style": "danger"}]})
    return {"text": _clip(f"{message.subject}\n{message.text}", 3000), "blocks": blocks}


def teams_body(message: Message) -> dict[str, Any]:
    """A Teams incoming webhook (or Workflows "post to a channel when a webhook request is received") message:
    one Adaptive Card (1.4)."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": _one_line(message.subject), "weight": "Bolder", "size": "Medium",
         "wrap": True, **({"color": "Attention"} if message.kind == "alert" else {})},
        {"type": "TextBlock", "text": message.text, "wrap": True},
    ]
    facts = _facts(message)
    if facts:
        body.append({"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts]})
    card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                            "version": "1.4", "body": body}
    if message.ack_url:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Acknowledge", "url": message.ack_url}]
    return {"type": "message", "summary": _clip(_one_line(message.subject), 150), "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


PAGERDUTY_ACTIONS: Final = {"alert": "trigger", "test": "trigger", "acknowledged": "acknowledge",
                            "returned": "resolve"}
PAGERDUTY_SEVERITY: Final = {"high": "critical", "medium": "error", "low": "warning", "advisory": "info"}


def pagerduty_routing_key(address: str) -> str:
    """The routing (integration) key of a pagerduty address: `https://events.pagerduty.com/v2/enqueue#<key>`."""
    return urlsplit(address).fragment


def pagerduty_body(message: Message, routing_key: str, sent_at: datetime, source: str) -> dict[str, Any]:
    """A PagerDuty Events API v2 event: trigger (alert, test), acknowledge or resolve (returned), deduplicated on
    the alarm id (a test on its own id)."""
    action = PAGERDUTY_ACTIONS.get(message.kind, "trigger")
    dedup = _clip(message.alarm_id or f"culturectl-test-{message.id}", 255)
    event: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup}
    if action != "trigger":
        return event
    facts = message.facts
    payload: dict[str, Any] = {
        "summary": _clip(_one_line(message.subject), 1024), "source": source,
        "severity": "info" if message.kind == "test" else PAGERDUTY_SEVERITY.get(message.priority, "error"),
        "timestamp": sent_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "custom_details": {"text": message.text, **({"alarm": dict(facts)} if facts else {})},
    }
    for name, key in (("component", "device"), ("group", "channel")):
        if isinstance(facts.get(key), str) and facts[key]:
            payload[name] = facts[key]
    event["payload"] = payload
    event["client"] = "culturectl"
    if message.ack_url:
        event["links"] = [{"href": message.ack_url, "text": "Acknowledge in culturectl"}]
    return event


def sms_text(message: Message) -> str:
    """At most 320 characters: the subject, then the acknowledgement link whole (the subject is shortened)."""
    suffix = f" Ack: {message.ack_url}" if message.ack_url else ""
    if len(suffix) > SMS_MAX_CHARS // 2:
        suffix = ""  # an absurd link: the body still carries ack_url
    return _clip(_one_line(message.subject), SMS_MAX_CHARS - len(suffix)) + suffix


_SPOKEN = {"alert": "alarm", "acknowledged": "acknowledged", "returned": "returned to normal", "test": "test call"}


def voice_text(message: Message) -> str:
    """One sentence to be read out (no link: the acknowledgement goes by the other channels or the dashboard)."""
    what = _SPOKEN.get(message.kind, message.kind)
    subject = _one_line(message.subject).rstrip(".")
    return _clip(f"This is culturectl, {what}: {subject}. Priority {message.priority}.", VOICE_MAX_CHARS)


def provider_body(message: Message, phone: str, text: str) -> dict[str, Any]:
    """What an SMS or voice provider adapter receives."""
    return {"to": phone, "text": text, "id": message.id, "kind": message.kind, "priority": message.priority,
            "alarm_id": message.alarm_id, "ack_url": message.ack_url}


def _json_bytes(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


_MSGID_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
_X_PRIORITY = {"high": "1 (Highest)", "medium": "2 (High)", "low": "3 (Normal)", "advisory": "5 (Lowest)"}


def email_message(message: Message, *, sender: str, recipient: str, sent_at: datetime) -> EmailMessage:
    """The notice as an email: plain text, Message-ID from the message id, its priority in headers."""
    msg = EmailMessage(policy=email.policy.SMTP)
    domain = sender.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = f"<{_MSGID_UNSAFE.sub('-', message.id) or 'notice'}@{domain}>"
    msg["Date"] = email.utils.format_datetime(sent_at.astimezone(UTC))
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = _one_line(message.subject)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    msg["X-Priority"] = _X_PRIORITY.get(message.priority, "3 (Normal)")
    if message.priority == "high":
        msg["Importance"] = "high"
    msg["X-Culturectl-Priority"] = message.priority
    msg["X-Culturectl-Kind"] = message.kind
    if message.alarm_id:
        msg["X-Culturectl-Alarm"] = _one_line(message.alarm_id)
    msg.set_content(message.text, charset="utf-8", cte="quoted-printable")
    return msg


# --------------------------------------------------------------------------------------------------
# Channels
# --------------------------------------------------------------------------------------------------


def _http_url_problem(name: str, url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{name} must be an http(s) URL with a host"
    return None


def _where(url: str) -> str:
    """The host (and port) of a URL, never its path, query or fragment (they can hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _short(text: str, limit: int = 200) -> str:
    return _clip(_one_line(text), limit)


class Channels:
    """The service's channels, built from its settings (one per app: `Runtime.channels`)."""

    def __init__(self, settings: Settings, now: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self._now = now or (lambda: datetime.now(UTC))
        self._https: ssl.SSLContext | None = None

    # ---- configuration ------------------------------------------------------------------------

    def not_configured(self, kind: str) -> str | None:
        """Why `kind` cannot send (which setting is missing); None when it can."""
        s = self.settings
        secret = None
        if not (s.webhook_secret and s.webhook_secret.get_secret_value()):
            secret = "no webhook secret (CULTURECTL_WEBHOOK_SECRET): every HTTP notification is signed with it"
        if kind == "email":
            if not s.smtp_host:
                return "no SMTP server (CULTURECTL_SMTP_HOST)"
            if s.smtp_username and not (s.smtp_password and s.smtp_password.get_secret_value()):
                return "CULTURECTL_SMTP_USERNAME is set without CULTURECTL_SMTP_PASSWORD"
            if s.smtp_username and s.smtp_security == "none":
                return ("a login would send the SMTP password unencrypted: set CULTURECTL_SMTP_SECURITY to "
                        "starttls or tls")
            return None
        if kind == "webhook":
            return secret
        if kind in ("sms", "voice"):
            url = s.sms_url if kind == "sms" else s.voice_url
            name = f"CULTURECTL_{kind.upper()}_URL"
            if not url:
                return f"no {kind} provider URL ({name})"
            return _http_url_problem(name, url) or secret
        return f"unknown channel kind {kind!r} (one of {', '.join(KINDS)})"

    def configured(self, kind: str) -> bool:
        return self.not_configured(kind) is None

    def timeout(self, kind: str) -> float:
        """Wall seconds one attempt on `kind` may take."""
        return self.settings.smtp_timeout if kind == "email" else self.settings.webhook_timeout

    # ---- sending ------------------------------------------------------------------------------

    async def send(self, target: Target, message: Message) -> str:
        """Send one attempt; answer a short detail ("250 ...", "HTTP 202") or raise DeliveryError."""
        reason = self.not_configured(target.kind)
        if reason is not None:
            raise ChannelNotConfigured(target.kind, reason)
        if target.kind == "email":
            return await self._email(target.address, message)
        if target.kind == "webhook":
            return await self._webhook(target, message)
        s = self.settings
        if target.kind == "sms":
            return await self._post(s.sms_url, provider_body(message, target.address, sms_text(message)), message,
                                    what="the SMS provider", token=_reveal(s.sms_token))
        return await self._post(s.voice_url, provider_body(message, target.address, voice_text(message)), message,
                                what="the voice provider", token=_reveal(s.voice_token))

    # ---- webhooks -----------------------------------------------------------------------------

    async def _webhook(self, target: Target, message: Message) -> str:
        url, fmt = target.address, target.format
        problem = _http_url_problem("a webhook address", url)
        if problem:
            raise DeliveryError(problem, permanent=True)
        sent_at = self._now()
        body: dict[str, Any]
        if fmt == "generic":
            body = generic_body(message, sent_at)
        elif fmt == "slack":
            body = slack_body(message)
        elif fmt == "teams":
            body = teams_body(message)
        elif fmt == "pagerduty":
            key = pagerduty_routing_key(url)
            if not key:
                raise DeliveryError("a pagerduty address needs its routing key after '#'", permanent=True)
            source = _where(self.settings.public_url) if self.settings.public_url else "culturectl"
            body = pagerduty_body(message, key, sent_at, source)
        else:
            raise DeliveryError(f"unknown webhook format {fmt!r} (one of {', '.join(WEBHOOK_FORMATS)})",
                                permanent=True)
        return await self._post(url.split("#", 1)[0], body, message, what=f"the {fmt} webhook")

    async def _post(self, url: str, body: Mapping[str, Any], message: Message, *, what: str,
                    token: str | None = None) -> str:
        """POST `body` signed; 2xx is delivered, 4xx (not 408/429) and 3xx permanent, the rest transient."""
        secret = self.settings.webhook_secret
        assert secret is not None  # not_configured checked it
        content = _json_bytes(body)
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
                   TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: signature(secret.get_secret_value(), stamp, content),
                   IDEMPOTENCY_HEADER: message.id}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        where, limit = _where(url), self.settings.webhook_timeout
        try:
            async with asyncio.timeout(limit):
                async with httpx.AsyncClient(timeout=limit, follow_redirects=False, trust_env=False,
                                             verify=self._https_context()) as client:
                    response = await client.post(url, content=content, headers=headers)
        except (TimeoutError, httpx.TimeoutException):
            raise DeliveryError(f"{what} at {where} did not answer within {limit:g} s", permanent=False) from None
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{what} at {where} cannot be reached ({type(exc).__name__})",
                                permanent=False) from None
        code = response.status_code
        if 200 <= code < 300:
            log.debug("%s at %s accepted notice %s (HTTP %d)", what, where, message.id, code)
            return f"HTTP {code}"
        permanent = 300 <= code < 500 and code not in (408, 429)
        # Only the status and its phrase: a receiver's body may echo the request's path, and a Slack or Teams
        # webhook's path is its secret.
        phrase = _short(response.reason_phrase, 60)
        raise DeliveryError(f"{what} at {where} answered HTTP {code}" + (f" {phrase}" if phrase else ""),
                            permanent=permanent)

    # ---- email --------------------------------------------------------------------------------

    async def _email(self, recipient: str, message: Message) -> str:
        s = self.settings
        msg = email_message(message, sender=s.smtp_from, recipient=recipient, sent_at=self._now())
        data = msg.as_bytes()
        try:
            # each socket operation has the timeout; the whole exchange too (the thread ends on its own timeout)
            return await asyncio.wait_for(asyncio.to_thread(self._smtp_exchange, recipient, data),
                                          timeout=s.smtp_timeout)
        except TimeoutError:
            raise DeliveryError(f"the SMTP server {self._smtp_where()} did not finish within {s.smtp_timeout:g} s",
                                permanent=False) from None

    def _smtp_where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"

    def _https_context(self) -> ssl.SSLContext:
        """The system's CAs for HTTPS, loaded once (loading them costs ~20 ms, more than a webhook call)."""
        if self._https is None:
            self._https = ssl.create_default_context()
        return self._https

    def _tls_context(self) -> ssl.SSLContext:
        ca = self.settings.smtp_ca_file
        return ssl.create_default_context(cafile=str(ca) if ca else None)

    def _redact(self, text: str) -> str:
        """The SMTP password in any form a server could echo (as is, base64, AUTH PLAIN's blob) replaced."""
        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else ""
        if not password:
            return text
        forms = {password, base64.b64encode(password.encode()).decode(),
                 base64.b64encode(f"\0{s.smtp_username}\0{password}".encode()).decode()}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
        return text

    def _smtp_exchange(self, recipient: str, data: bytes) -> str:
        """The whole SMTP dialogue (blocking; run in a thread): connect, TLS, login, MAIL, RCPT, DATA."""
        s = self.settings
        where = self._smtp_where()
        try:
            context = None if s.smtp_security == "none" else self._tls_context()
            smtp: smtplib.SMTP
            if s.smtp_security == "tls":
                smtp = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout, context=context)
            else:
                smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            with smtp:
                smtp.ehlo()
                if s.smtp_security == "starttls":
                    if not smtp.has_extn("starttls"):
                        raise DeliveryError(f"the SMTP server {where} does not offer STARTTLS (set "
                                            "CULTURECTL_SMTP_SECURITY to match it)", permanent=True)
                    smtp.starttls(context=context)
                    smtp.ehlo()
                if s.smtp_username:
                    assert s.smtp_password is not None
                    try:
                        smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
                    except smtplib.SMTPAuthenticationError as exc:
                        raise self._refused(exc.smtp_code, exc.smtp_error,
                                            f"refused the login of {s.smtp_username!r}") from None
                    except smtplib.SMTPNotSupportedError:
                        raise DeliveryError(f"the SMTP server {where} offers no login (AUTH) on this connection",
                                            permanent=True) from None
                code, reply = smtp.mail(s.smtp_from)
                if code != 250:
                    raise self._refused(code, reply, f"refused the sender {s.smtp_from!r}")
                code, reply = smtp.rcpt(recipient)
                if code not in (250, 251):
                    raise self._refused(code, reply, f"refused the recipient {recipient!r}")
                code, reply = smtp.data(data)
                return _short(f"{code} {reply.decode('utf-8', 'replace')}")
        except DeliveryError:
            raise
        except smtplib.SMTPResponseException as exc:  # greeting, HELO, STARTTLS, DATA ...
            raise self._refused(exc.smtp_code, exc.smtp_error, "answered") from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"the SMTP server {where} has a certificate we do not trust "
                                f"({exc.verify_message}; CULTURECTL_SMTP_CA_FILE names the CA)",
                                permanent=True) from None
        except ssl.SSLError as exc:
            raise DeliveryError(f"TLS with the SMTP server {where} failed ({exc.reason or type(exc).__name__})",
                                permanent=False) from None
        except smtplib.SMTPServerDisconnected:
            raise DeliveryError(f"the SMTP server {where} closed the connection", permanent=False) from None
        except TimeoutError:
            raise DeliveryError(f"the SMTP server {where} did not answer within {s.smtp_timeout:g} s",
                                permanent=False) from None
        except OSError as exc:
            raise DeliveryError(f"the SMTP server {where} cannot be reached ({exc.strerror or type(exc).__name__})",
                                permanent=False) from None
        except smtplib.SMTPException as exc:
            raise DeliveryError(f"SMTP with {where} failed: {_short(self._redact(str(exc)))}",
                                permanent=False) from None

    def _refused(self, code: int, reply: bytes | str, what: str) -> DeliveryError:
        text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
        return DeliveryError(f"the SMTP server {self._smtp_where()} {what}: {code} {_short(self._redact(text))}",
                             permanent=500 <= code < 600)
