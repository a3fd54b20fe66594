"""Request limits: the largest request body (413), the open live streams per principal and in total (503), and the
abuse limits' context for the request (app.auth.throttle).

`LimitsMiddleware` is pure ASGI (not BaseHTTPMiddleware: the live stream must not be buffered). It refuses a body
whose Content-Length is over the limit before reading it, and reads a body without Content-Length (chunked) up to
the limit before the application sees it: one byte more is a 413. Recipe uploads and count imports may be larger
(`max_upload_bytes`). The counts are per replica, like the throttle's.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import RuntimeDep
from app.api.security import CurrentPrincipal
from app.auth import throttle
from app.auth.principal import Principal
from app.core.problems import PROBLEM_BASE, PROBLEM_JSON, Problem
from app.runtime import Runtime
from app.settings import Settings

# The routes whose bodies may reach max_upload_bytes: a recipe's YAML, a cell counter's export (base64).
UPLOADS = (re.compile(r"^/api/v1/recipes/?$"), re.compile(r"^/api/v1/runs/[^/]+/count-imports/?$"))


def limits_from(settings: Settings) -> throttle.Limits:
    """The abuse limits the settings describe."""
    def rule(free: int) -> throttle.Rule:
        return throttle.Rule(free=free, base_s=settings.throttle_delay_s, max_s=settings.throttle_max_delay_s,
                             window_s=settings.throttle_window_s)

    return throttle.Limits(rules={
        ("login_rate", "client"): rule(settings.login_throttle_client_after),
        ("login_rate", "user"): rule(settings.login_throttle_after),
        ("signature_rate", "client"): rule(settings.signature_throttle_client_after),
        ("signature_rate", "user"): rule(settings.signature_throttle_after),
    }, unlock_minutes=settings.lockout_unlock_minutes,
        password_max_age=timedelta(days=settings.password_max_age_days) if settings.password_max_age_days else None)


def body_limit(settings: Settings, path: str) -> int:
    return settings.max_upload_bytes if any(p.match(path) for p in UPLOADS) else settings.max_body_bytes


class _TooLarge(Exception):
    pass


class LimitsMiddleware:
    """Refuse oversized bodies with 413 problem JSON; make the runtime's abuse limits current for the request."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.runtime.limits
        token = throttle.activate(limits)
        try:
            limit = body_limit(self.runtime.settings, scope.get("path", ""))
            headers = dict(scope.get("headers") or [])
            length = headers.get(b"content-length")
            if length is not None:
                try:
                    declared = int(length)
                except ValueError:
                    declared = 0  # the server refuses a malformed length itself
                if declared > limit:
                    await self._refuse(scope, send, limit)
                    return
                await self.app(scope, receive, send)
                return
            if b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
                await self.app(scope, receive, send)
                return
            try:
                messages = await self._read(receive, limit)
            except _TooLarge:
                await self._refuse(scope, send, limit)
                return
            await self.app(scope, self._replay(messages, receive), send)
        finally:
            throttle.reset(token)

    @staticmethod
    async def _read(receive: Receive, limit: int) -> list[Message]:
        """The body's messages, up to `limit` bytes (one more: _TooLarge)."""
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > limit:
                raise _TooLarge
            if not message.get("more_body", False):
                return messages

    @staticmethod
    def _replay(messages: list[Message], receive: Receive) -> Receive:
        pending = list(messages)

        async def replay() -> Message:
            return pending.pop(0) if pending else await receive()

        return replay

    async def _refuse(self, scope: Scope, send: Send, limit: int) -> None:
        self.runtime.limits.body_too_large += 1
        body = json.dumps({
            "type": PROBLEM_BASE + "body-too-large", "title": "Request body too large", "status": 413,
            "detail": f"the request body is larger than {limit} bytes (CULTURECTL_MAX_BODY_BYTES; recipe uploads "
                      "and count imports: CULTURECTL_MAX_UPLOAD_BYTES)",
            "instance": scope.get("path", ""), "rule": "max_body_bytes", "limit_bytes": limit,
        }).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------
# Open live streams
# --------------------------------------------------------------------------------------------------


def _who(principal: Principal) -> str:
    return f"{principal.kind}:{principal.id if principal.id is not None else principal.name}"


class StreamSlot:
    """One open stream's place; released when the stream ends (or, if it never started, when it is dropped)."""

    def __init__(self, streams: dict[str, int], who: str) -> None:
        self._streams, self._who, self._held = streams, who, True

    def release(self) -> None:
        if self._held:
            self._held = False
            n = self._streams.get(self._who, 0) - 1
            if n > 0:
                self._streams[self._who] = n
            else:
                self._streams.pop(self._who, None)

    def __del__(self) -> None:
        self.release()


async def stream_slot(runtime: RuntimeDep, principal: CurrentPrincipal) -> StreamSlot:
    """A place for one more live stream, or 503 naming the cap that is reached (async: it runs on the event loop,
    where the slots are also given back, never in a worker thread)."""
    s, streams, who = runtime.settings, runtime.limits.streams, _who(principal)
    mine, total = streams.get(who, 0), sum(streams.values())
    cap: tuple[str, int, str] | None = None
    if mine >= s.sse_max_streams_per_principal:
        cap = ("sse_streams_per_principal", s.sse_max_streams_per_principal,
               f"{principal.name} has {mine} live streams open, the most one user or API key may hold "
               "(CULTURECTL_SSE_MAX_STREAMS_PER_PRINCIPAL): close one first")
    elif total >= s.sse_max_streams:
        cap = ("sse_streams_total", s.sse_max_streams,
               f"this replica serves {total} live streams, its most (CULTURECTL_SSE_MAX_STREAMS): try again "
               "later")
    if cap is not None:
        runtime.limits.sse_refused[cap[0]] = runtime.limits.sse_refused.get(cap[0], 0) + 1
        problem = Problem(503, "too-many-streams", "Too many live streams", cap[2], rule=cap[0], limit=cap[1])
        problem.headers = {"Retry-After": "10"}
        raise problem
    streams[who] = mine + 1
    return StreamSlot(streams, who)


StreamSlotDep = Annotated[StreamSlot, Depends(stream_slot)]


# --------------------------------------------------------------------------------------------------
# The OpenAPI document
# --------------------------------------------------------------------------------------------------

_PASSWORD_BODIES = ("LoginRequest", "SignatureInput", "SignatureRequest", "PasswordChange")


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def document_limits(doc: dict[str, Any], problem_schema: dict[str, Any]) -> None:
    """Add 413 to every operation with a body, and 429 to those whose body carries a password (it may be checked)."""
    schemas = doc.get("components", {}).get("schemas", {})
    for path, operations in doc.get("paths", {}).items():
        for op in operations.values():
            if not isinstance(op, dict) or "requestBody" not in op:
                continue
            responses = op.setdefault("responses", {})
            content = {PROBLEM_JSON: {"schema": problem_schema}}
            responses.setdefault("413", {"description": "the request body is larger than CULTURECTL_MAX_BODY_BYTES "
                                                        "(limit_bytes)", "content": content})
            names: set[str] = set()
            _refs(op["requestBody"], names)
            seen: set[str] = set()
            while names - seen:  # the schemas the body reaches
                name = (names - seen).pop()
                seen.add(name)
                _refs(schemas.get(name, {}), names)
            checks_password = any(set(schemas.get(n, {}).get("properties", {})) & {"password", "current_password"}
                                  for n in seen)
            if checks_password or seen & set(_PASSWORD_BODIES) or path.endswith("/auth/login"):
                responses.setdefault("429", {"description": "too many failed password checks from this client or "
                                                            "for this user name: retry after Retry-After seconds",
                                             "content": content})
