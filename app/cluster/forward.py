"""Commands for a device or an alarm another replica owns go to that replica, whole (one actor per job).

A setpoint command for a device, or an operator's action on an alarm, is carried out by the replica that holds
the device's lease (the leader for the site's own alarms): it checks the rules, writes the device, journals and
audits, exactly as if the request had arrived there. The replica that received the request sends it on over HTTP
to the owner's `/internal/cluster/...` routes, signed with HMAC-SHA256 under the service key the replicas share
(a timestamp within `MAX_SKEW_S` and the path and body are signed), and answers with the owner's answer: its
result, or its problem JSON with its status.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import unquote

import httpx

from app.auth.principal import Principal, Role
from app.core.problems import Problem

MAX_SKEW_S = 30.0
PREFIX = "/internal/cluster"
HEADER_REPLICA = "X-Culturectl-Replica"
HEADER_TIME = "X-Culturectl-Time"
HEADER_SIGNATURE = "X-Culturectl-Signature"


def _key(key: bytes) -> bytes:
    """The replicas' own key, derived from the service key (sessions and links use other derivations)."""
    return hmac.new(key, b"culturectl replica calls", hashlib.sha256).digest()


def sign(key: bytes, at: str, path: str, body: bytes) -> str:
    """HMAC-SHA256 over the method, the time, the path as the server decodes it and the body."""
    msg = b"POST\n" + at.encode() + b"\n" + path.encode() + b"\n" + body
    return hmac.new(_key(key), msg, hashlib.sha256).hexdigest()


def verify(key: bytes, headers: Mapping[str, str], path: str, body: bytes, now: float | None = None) -> str:
    """The sending replica's id when the request is signed with the shared key and fresh; else a 401 Problem."""
    at = headers.get(HEADER_TIME, "")
    given = headers.get(HEADER_SIGNATURE, "")
    try:
        skew = abs((now if now is not None else time.time()) - float(at))
    except ValueError:
        skew = float("inf")
    if not math.isfinite(skew) or skew > MAX_SKEW_S or not hmac.compare_digest(given, sign(key, at, path, body)):
        raise Problem(401, "replica-not-authenticated", "Not a replica",
                      "an internal request must be signed by a replica with the shared service key "
                      f"(CULTURECTL_SECRET_KEY) within {MAX_SKEW_S:g} s", rule="replica_signature")
    return headers.get(HEADER_REPLICA, "?")


def principal_of(data: Mapping[str, Any]) -> Principal:
    return Principal(kind=data["kind"], id=data.get("id"), name=str(data["name"]), role=Role(data["role"]),
                     display_name=str(data.get("display_name") or ""), user_id=data.get("user_id"),
                     token_id=data.get("token_id"))


def principal_data(p: Principal) -> dict[str, Any]:
    out = asdict(p)
    out["role"] = p.role.value
    return out


class Forwarder:
    """Sends a command to the replica that owns what it acts on (see the module docstring)."""

    def __init__(self, me: str, key: bytes, url_of: Callable[[str], str | None], timeout: float = 15.0) -> None:
        self.me = me
        self.key = key
        self.url_of = url_of
        self.timeout = timeout

    async def post(self, replica: str, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST `payload` to `replica`; its JSON answer, or its problem raised here."""
        url = self.url_of(replica)
        if url is None:
            raise Problem(503, "owner-unreachable", "Owner unreachable",
                          f"replica {replica} owns this but its address is not known yet; try again",
                          rule="replica_owner", replica=replica)
        body = json.dumps(payload, default=str).encode()
        full = PREFIX + path
        at = f"{time.time():.3f}"
        headers = {"Content-Type": "application/json", HEADER_REPLICA: self.me, HEADER_TIME: at,
                   HEADER_SIGNATURE: sign(self.key, at, unquote(full), body)}  # the path as the server decodes it
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                resp = await client.post(url.rstrip("/") + full, content=body, headers=headers)
        except (httpx.HTTPError, OSError) as exc:
            raise Problem(503, "owner-unreachable", "Owner unreachable",
                          f"replica {replica} owns this and cannot be reached now ({type(exc).__name__}); it is "
                          f"taken over within the lease time if it is gone: try again", rule="replica_owner",
                          replica=replica) from None
        try:
            data = resp.json()
        except ValueError:
            data = {}
        if resp.status_code == 401:  # the owner refused this replica's signature: a set-up fault, not the caller's
            raise Problem(502, "replica-refused", "Refused by the owning replica",
                          f"replica {replica} refused this replica's signed call: the replicas must share "
                          f"CULTURECTL_SECRET_KEY and keep their clocks within {MAX_SKEW_S:g} s",
                          rule="replica_signature", replica=replica)
        if resp.status_code >= 400:
            if not isinstance(data, dict):
                data = {}
            kind = str(data.pop("type", "")).rsplit("/", 1)[-1] or "owner-error"
            title = str(data.pop("title", "Refused by the owning replica"))
            detail = str(data.pop("detail", f"replica {replica} answered {resp.status_code}"))
            for k in ("status", "instance"):
                data.pop(k, None)
            raise Problem(resp.status_code, kind, title, detail, **data)
        if not isinstance(data, dict):
            raise Problem(502, "owner-error", "Owner error", f"replica {replica} answered with no object",
                          rule="replica_owner", replica=replica)
        return data
