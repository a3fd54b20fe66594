"""Replica-to-replica calls (app/cluster/forward.py): only a replica with the shared key, now, for this path and
body, is believed; a principal crosses unchanged."""

from __future__ import annotations

import pytest

from app.auth.principal import Principal, Role
from app.cluster import forward
from app.core.problems import Problem

KEY = b"k" * 40
PATH = "/internal/cluster/setpoints/incubator-1"
BODY = b'{"body": {"point": "temperature_setpoint", "value": 37.5}}'


def _headers(at: str, key: bytes = KEY, path: str = PATH, body: bytes = BODY) -> dict[str, str]:
    return {forward.HEADER_TIME: at, forward.HEADER_REPLICA: "r2",
            forward.HEADER_SIGNATURE: forward.sign(key, at, path, body)}


def test_a_signed_fresh_call_names_its_replica() -> None:
    assert forward.verify(KEY, _headers("1000.000"), PATH, BODY, now=1010.0) == "r2"


@pytest.mark.parametrize("case", ["other key", "other body", "other path", "too old", "from the future", "nan",
                                  "no time"])
def test_anything_else_is_refused_with_401(case: str) -> None:
    headers = _headers("1000.000")
    body, path, now = BODY, PATH, 1010.0
    if case == "other key":
        headers = _headers("1000.000", key=b"x" * 40)
    elif case == "other body":
        body = BODY.replace(b"37.5", b"39.5")
    elif case == "other path":
        path = "/internal/cluster/setpoints/incubator-2"
    elif case == "too old":
        now = 1000.0 + forward.MAX_SKEW_S + 1
    elif case == "from the future":
        now = 1000.0 - forward.MAX_SKEW_S - 1
    elif case == "nan":
        headers = _headers("nan")
    else:
        del headers[forward.HEADER_TIME]
    with pytest.raises(Problem) as exc:
        forward.verify(KEY, headers, path, body, now=now)
    assert exc.value.status == 401 and exc.value.extra["rule"] == "replica_signature"


def test_a_principal_crosses_unchanged() -> None:
    p = Principal(kind="user", id=7, name="op", role=Role.OPERATOR, display_name="Night Operator")
    assert forward.principal_of(forward.principal_data(p)) == p
