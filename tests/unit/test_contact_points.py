"""Contact point rules (pure, table-driven) and the channels' pure parts: signatures and short texts."""

from __future__ import annotations

import pytest

from app.notify import contacts
from app.notify.channels import Message, signature, sms_text, verify_signature, voice_text

GOOD = [
    ("email", "oncall@site.example", "generic", "oncall@site.example"),
    ("email", "  first.last+alarms@lab.site-1.example  ", "generic", "first.last+alarms@lab.site-1.example"),
    ("sms", "+41791234567", "generic", "+41791234567"),
    ("sms", "+41 79 123 45 67", "generic", "+41791234567"),
    ("voice", "+1 (555) 123-4567", "generic", "+15551234567"),
    ("sms", "+12345678", "generic", "+12345678"),  # 8 digits
    ("sms", "+123456789012345", "generic", "+123456789012345"),  # 15 digits
    ("webhook", "https://hooks.slack.com/services/T0/B0/abc", "slack", "https://hooks.slack.com/services/T0/B0/abc"),
    ("webhook", "http://10.0.0.5:8080/culturectl", "generic", "http://10.0.0.5:8080/culturectl"),
    ("webhook", "https://example.webhook.office.com/webhookb2/x", "teams",
     "https://example.webhook.office.com/webhookb2/x"),
    ("webhook", "https://events.pagerduty.com/v2/enqueue#0123456789abcdef0123456789abcdef", "pagerduty",
     "https://events.pagerduty.com/v2/enqueue#0123456789abcdef0123456789abcdef"),
]


@pytest.mark.parametrize(("kind", "address", "fmt", "stored"), GOOD)
def test_valid_contact_points(kind: str, address: str, fmt: str, stored: str) -> None:
    assert contacts.validate(kind, address, fmt, " work ") == (stored, fmt, "work")


BAD = [
    ("email", "oncall", "generic", "email-address", "address"),
    ("email", "On Call <oncall@site.example>", "generic", "email-address", "address"),
    ("email", "oncall@site.example\r\nBcc: x@evil.example", "generic", "email-address", "address"),
    ("email", "oncall@localhost", "generic", "email-address", "address"),  # a domain of two labels at least
    ("email", "a..b@site.example", "generic", "email-address", "address"),
    ("email", "x" * 65 + "@site.example", "generic", "email-address", "address"),
    ("email", "oncall@-site.example", "generic", "email-address", "address"),
    ("email", "oncall@site.example", "slack", "format-generic", "format"),
    ("sms", "0791234567", "generic", "e164-phone", "address"),  # no country code
    ("sms", "+0791234567", "generic", "e164-phone", "address"),  # country codes start 1-9
    ("sms", "+1234567", "generic", "e164-phone", "address"),  # 7 digits
    ("voice", "+1234567890123456", "generic", "e164-phone", "address"),  # 16 digits
    ("voice", "+41 79 ABC", "generic", "e164-phone", "address"),
    ("webhook", "ftp://files.site.example/x", "generic", "webhook-url", "address"),
    ("webhook", "https:///nohost", "generic", "webhook-url", "address"),
    ("webhook", "hooks.slack.com/services/x", "slack", "webhook-url", "address"),
    ("webhook", "https://user:pw@hooks.site.example/x", "generic", "webhook-url", "address"),
    ("webhook", "https://hooks.site.example/a b", "generic", "webhook-url", "address"),
    ("webhook", "https://hooks.site.example:99999/x", "generic", "webhook-url", "address"),
    ("webhook", "https://hooks.site.example/x#frag", "generic", "webhook-url", "address"),
    ("webhook", "https://hooks.site.example/" + "x" * 2000, "generic", "webhook-url", "address"),
    ("webhook", "https://events.pagerduty.com/v2/enqueue", "pagerduty", "pagerduty-routing-key", "address"),
    ("webhook", "https://events.pagerduty.com/v2/enqueue#short", "pagerduty", "pagerduty-routing-key", "address"),
    ("webhook", "https://hooks.site.example/x", "opsgenie", "webhook-format", "format"),
    ("pager", "+41791234567", "generic", "kind", "kind"),
]


@pytest.mark.parametrize(("kind", "address", "fmt", "rule", "field"), BAD)
def test_invalid_contact_points_name_their_rule(kind: str, address: str, fmt: str, rule: str, field: str) -> None:
    with pytest.raises(contacts.ContactRuleError) as err:
        contacts.validate(kind, address, fmt)
    assert (err.value.status, err.value.rule, err.value.field) == (422, rule, field), err.value.detail
    assert err.value.extra == {"rule": rule, "field": field}


@pytest.mark.parametrize(("label", "ok"), [("", True), ("x" * 100, True), ("x" * 101, False), ("a\nb", False)])
def test_labels(label: str, ok: bool) -> None:
    if ok:
        assert contacts.check_label(label) == label
    else:
        with pytest.raises(contacts.ContactRuleError):
            contacts.check_label(label)


def test_signature_round_trip_and_tampering() -> None:
    body = b'{"id":"n-1"}'
    header = signature("k", "1700000000", body)
    assert header == "sha256=" + __import__("hmac").new(b"k", b"1700000000." + body, "sha256").hexdigest()
    assert verify_signature("k", "1700000000", body, header, now=1700000100)
    assert verify_signature(b"k", "1700000000", body, header, max_age_s=None, now=0)
    assert not verify_signature("k", "1700000000", body, header, now=1700000301)  # older than 5 min
    assert not verify_signature("k", "1700000000", body + b" ", header, now=1700000000)
    assert not verify_signature("k", "not-a-time", body, header)
    assert not verify_signature("k", "1700000000", body, "sha256=é", now=1700000000)


def test_short_texts() -> None:
    m = Message(id="1", kind="acknowledged", subject="[acknowledged] incubator-1 CO2 low.", text="...",
                priority="medium")
    assert sms_text(m) == "[acknowledged] incubator-1 CO2 low."
    assert voice_text(m) == "This is culturectl, acknowledged: [acknowledged] incubator-1 CO2 low. Priority medium."
