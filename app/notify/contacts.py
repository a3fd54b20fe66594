"""Users' contact points (email, SMS, voice, webhook): the one module that reads and writes `contact_point`.

The rules are pure functions (`check_email`, `check_phone`, `check_webhook`, `check_label`, `validate`); every
change (create, update, a test send's result) writes exactly one audit record in its transaction, addresses
included: they are personal data, and the audit trail must show where notices went. A contact point is never
deleted: it is disabled (deliveries refer to it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg

from app.auth.principal import Principal
from app.core.problems import Problem
from app.notify.channels import KINDS, WEBHOOK_FORMATS, Target
from app.records import audit

LABEL_MAX: Final = 100
EMAIL_MAX: Final = 254
URL_MAX: Final = 2000
RESULT_MAX: Final = 500

EMAIL_RULE: Final = ("an address like name@example.org: no display name, no spaces, a domain of at least two "
                     "labels, at most 254 characters")
PHONE_RULE: Final = "an E.164 number: '+', the country code and number, 8-15 digits (spaces and dashes are dropped)"
WEBHOOK_RULE: Final = ("an http(s) URL with a host, no user:password, at most 2000 characters; format pagerduty: "
                       "the Events API URL with the routing key after '#' (https://events.pagerduty.com/v2/"
                       "enqueue#<key>); other formats: no '#'")

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE: Final = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$")
PHONE_RE: Final = re.compile(r"^\+[1-9][0-9]{7,14}$")
ROUTING_KEY_RE: Final = re.compile(r"^[A-Za-z0-9]{20,64}$")
_PHONE_SEPARATORS = re.compile(r"[\s\-.()/]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

COLUMNS: Final = ("id, username, kind, address, format, label, enabled, created_at, updated_at, last_test_at, "
                  "last_test_result")


class ContactRuleError(Problem):
    """422: a contact point breaks a rule (`rule` names it, `field` the member of the body)."""

    def __init__(self, rule: str, field: str, detail: str) -> None:
        super().__init__(422, "invalid-contact-point", "Invalid contact point", detail, rule=rule, field=field)
        self.rule = rule
        self.field = field


# --------------------------------------------------------------------------------------------------
# Rules (pure)
# --------------------------------------------------------------------------------------------------


def check_email(address: str) -> str:
    """The address, trimmed; ContactRuleError unless it is a bare address (no name, no header tricks)."""
    value = address.strip()
    local = value.rpartition("@")[0]
    if len(value) > EMAIL_MAX or len(local) > 64 or not EMAIL_RE.match(value):
        raise ContactRuleError("email-address", "address", f"{_shown(value)} is not an email address: {EMAIL_RULE}")
    return value


def check_phone(number: str) -> str:
    """The number in E.164 (+41791234567); spaces, dashes, dots, slashes and brackets are dropped first."""
    value = _PHONE_SEPARATORS.sub("", number.strip())
    if not PHONE_RE.match(value):
        raise ContactRuleError("e164-phone", "address", f"{_shown(number.strip())} is not a phone number: "
                                                        f"{PHONE_RULE}")
    return value


def check_webhook(url: str, fmt: str) -> str:
    """The URL, trimmed; ContactRuleError unless http(s) with a host, and a routing key for pagerduty."""
    value = url.strip()
    if len(value) > URL_MAX or _CONTROL.search(value) or " " in value:
        raise ContactRuleError("webhook-url", "address", f"the webhook address is not a URL: {WEBHOOK_RULE}")
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # a bad port raises ValueError
    except ValueError:
        raise ContactRuleError("webhook-url", "address",
                               f"the webhook address is not a URL: {WEBHOOK_RULE}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ContactRuleError("webhook-url", "address",
                               f"the webhook address needs http:// or https:// and a host: {WEBHOOK_RULE}")
    if parts.username is not None or parts.password is not None:
        raise ContactRuleError("webhook-url", "address", "the webhook address must not hold a user or password "
                                                         "(user:password@): use a token in the path instead")
    if fmt == "pagerduty":
        if not ROUTING_KEY_RE.match(parts.fragment):
            raise ContactRuleError("pagerduty-routing-key", "address",
                                   "a pagerduty address is the Events API v2 URL with the integration's routing key "
                                   "after '#': https://events.pagerduty.com/v2/enqueue#<routing key> (20-64 letters "
                                   "and digits)")
    elif "#" in value:
        raise ContactRuleError("webhook-url", "address", "the webhook address must not have a '#' part "
                                                         "(only format pagerduty carries its routing key there)")
    return value


def check_format(kind: str, fmt: str) -> str:
    if kind == "webhook":
        if fmt not in WEBHOOK_FORMATS:
            raise ContactRuleError("webhook-format", "format",
                                   f"format {_shown(fmt)} is not a webhook format: one of {', '.join(WEBHOOK_FORMATS)}")
    elif fmt != "generic":
        raise ContactRuleError("format-generic", "format", f"a {kind} contact point has format 'generic' "
                                                           "(formats are for webhooks)")
    return fmt


def check_label(label: str) -> str:
    value = label.strip()
    if len(value) > LABEL_MAX or _CONTROL.search(value):
        raise ContactRuleError("label", "label", f"a label is at most {LABEL_MAX} characters on one line")
    return value


def check_address(kind: str, address: str, fmt: str = "generic") -> str:
    """The address as stored (trimmed, a phone number in E.164) for a contact point of `kind` and `fmt`."""
    if kind == "email":
        return check_email(address)
    if kind in ("sms", "voice"):
        return check_phone(address)
    if kind == "webhook":
        return check_webhook(address, fmt)
    raise ContactRuleError("kind", "kind", f"kind {_shown(kind)} is not one of {', '.join(KINDS)}")


def validate(kind: str, address: str, fmt: str = "generic", label: str = "") -> tuple[str, str, str]:
    """(address, format, label) as stored, or ContactRuleError naming the first rule broken."""
    if kind not in KINDS:
        raise ContactRuleError("kind", "kind", f"kind {_shown(kind)} is not one of {', '.join(KINDS)}")
    fmt = check_format(kind, fmt)
    return check_address(kind, address, fmt), fmt, check_label(label)


def _shown(value: str) -> str:
    """A value quoted in an error, cut short."""
    return repr(value if len(value) <= 80 else value[:77] + "...")


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContactPoint:
    id: int
    username: str
    kind: str
    address: str
    format: str
    label: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_test_at: datetime | None
    last_test_result: str | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ContactPoint:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def target(self) -> Target:
        """Where a channel sends (app.notify.channels)."""
        return Target(kind=self.kind, address=self.address, format=self.format)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _audit_view(cp: ContactPoint) -> dict[str, Any]:
    return {"username": cp.username, "kind": cp.kind, "address": cp.address, "format": cp.format,
            "label": cp.label, "enabled": cp.enabled}


def _not_found(contact_id: int) -> Problem:
    return Problem(404, "contact-point-not-found", "No such contact point",
                   f"there is no contact point with id {contact_id}")


def _exists(username: str, kind: str, address: str) -> Problem:
    return Problem(409, "contact-point-exists", "Contact point exists",
                   f"{username} already has the {kind} contact point {address!r} (enable it instead of adding it "
                   "again)", rule="one contact point per user, kind and address")


async def get(conn: asyncpg.Connection, contact_id: int) -> ContactPoint | None:
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM contact_point WHERE id = $1", contact_id)
    return None if row is None else ContactPoint.from_row(row)


async def require(conn: asyncpg.Connection, contact_id: int) -> ContactPoint:
    """The contact point, or a 404 problem."""
    cp = await get(conn, contact_id)
    if cp is None:
        raise _not_found(contact_id)
    return cp


async def list_for_user(conn: asyncpg.Connection, username: str) -> list[ContactPoint]:
    """Every contact point of a user, enabled or not, oldest first."""
    rows = await conn.fetch(f"SELECT {COLUMNS} FROM contact_point WHERE username = $1 ORDER BY id", username)
    return [ContactPoint.from_row(r) for r in rows]


async def for_users(conn: asyncpg.Connection, usernames: Sequence[str],
                    kinds: Sequence[str] | None = None) -> list[ContactPoint]:
    """The enabled contact points of these users (of `kinds` when given), by username then id: whom the sender
    notifies. Users whose account is disabled are left out."""
    rows = await conn.fetch(
        f"SELECT {', '.join('c.' + c.strip() for c in COLUMNS.split(','))} FROM contact_point c "
        "JOIN users u ON u.username = c.username "
        "WHERE c.username = ANY($1::text[]) AND c.enabled AND NOT u.disabled "
        "AND ($2::text[] IS NULL OR c.kind = ANY($2::text[])) ORDER BY c.username, c.id",
        list(usernames), None if kinds is None else list(kinds))
    return [ContactPoint.from_row(r) for r in rows]


async def create(
    conn: asyncpg.Connection, *, username: str, kind: str, address: str, format: str = "generic", label: str = "",
    enabled: bool = True, actor: Principal, client: str | None = None, reason: str | None = None,
    at: datetime | None = None,
) -> ContactPoint:
    """A new contact point of `username`, checked against the rules. Audited as contact_point.create."""
    address, format, label = validate(kind, address, format, label)
    async with conn.transaction():
        if not await conn.fetchval("SELECT 1 FROM users WHERE username = $1", username):
            raise Problem(404, "user-not-found", "No such user", f"there is no user named {username!r}")
        try:
            row = await conn.fetchrow(
                "INSERT INTO contact_point (username, kind, address, format, label, enabled, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), coalesce($7, now())) "
                f"RETURNING {COLUMNS}", username, kind, address, format, label, enabled, at)
        except asyncpg.UniqueViolationError:
            raise _exists(username, kind, address) from None
        assert row is not None
        cp = ContactPoint.from_row(row)
        await audit.record(conn, actor=actor, action="contact_point.create", entity_type="contact_point",
                           entity_id=cp.id, old=None, new=_audit_view(cp), reason=reason, client=client)
    return cp


async def update(
    conn: asyncpg.Connection, contact_id: int, *, actor: Principal, label: str | None = None,
    enabled: bool | None = None, format: str | None = None, address: str | None = None, reason: str | None = None,
    client: str | None = None, at: datetime | None = None,
) -> ContactPoint:
    """Change a contact point's label, enabled flag, format or address (its kind and owner stay). The owner may
    leave out the reason; anyone else (an admin) must give one. Nothing to change: the contact point as it is, no
    audit record. Audited as contact_point.update."""
    async with conn.transaction():
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM contact_point WHERE id = $1 FOR UPDATE", contact_id)
        if row is None:
            raise _not_found(contact_id)
        old = ContactPoint.from_row(row)
        fmt = old.format if format is None else format
        new_address, new_format, new_label = validate(
            old.kind, old.address if address is None else address, fmt, old.label if label is None else label)
        new_enabled = old.enabled if enabled is None else enabled
        if (new_address, new_format, new_label, new_enabled) == (old.address, old.format, old.label, old.enabled):
            return old
        why = (reason or "").strip()
        if not why:
            if actor.kind == "user" and actor.name == old.username:
                why = "changed by the user"
            else:
                raise Problem(422, "reason-required", "Reason required",
                              f"changing {old.username}'s contact point needs a reason (field 'reason')",
                              rule="reason-required", field="reason")
        try:
            row = await conn.fetchrow(
                "UPDATE contact_point SET address = $2, format = $3, label = $4, enabled = $5, "
                f"updated_at = coalesce($6, now()) WHERE id = $1 RETURNING {COLUMNS}",
                contact_id, new_address, new_format, new_label, new_enabled, at)
        except asyncpg.UniqueViolationError:
            raise _exists(old.username, old.kind, new_address) from None
        assert row is not None
        cp = ContactPoint.from_row(row)
        await audit.record(conn, actor=actor, action="contact_point.update", entity_type="contact_point",
                           entity_id=cp.id, old=_audit_view(old), new=_audit_view(cp), reason=why, client=client)
    return cp


async def record_test(
    conn: asyncpg.Connection, contact_id: int, at: datetime, result: str, *, ok: bool, actor: Principal,
    client: str | None = None,
) -> ContactPoint:
    """Keep a test send's result on the contact point (`last_test_at`, `last_test_result`). Audited as
    contact_point.test, with where it went and the result."""
    result = result if len(result) <= RESULT_MAX else result[: RESULT_MAX - 3] + "..."
    async with conn.transaction():
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM contact_point WHERE id = $1 FOR UPDATE", contact_id)
        if row is None:
            raise _not_found(contact_id)
        old = ContactPoint.from_row(row)
        row = await conn.fetchrow(
            f"UPDATE contact_point SET last_test_at = $2, last_test_result = $3 WHERE id = $1 RETURNING {COLUMNS}",
            contact_id, at, result)
        assert row is not None
        cp = ContactPoint.from_row(row)
        await audit.record(
            conn, actor=actor, action="contact_point.test", entity_type="contact_point", entity_id=cp.id,
            old={"last_test_at": old.last_test_at, "last_test_result": old.last_test_result},
            new={"username": cp.username, "kind": cp.kind, "address": cp.address, "format": cp.format, "ok": ok,
                 "last_test_at": cp.last_test_at, "last_test_result": cp.last_test_result},
            reason="test notification sent", client=client)
    return cp
