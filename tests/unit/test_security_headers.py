"""The security headers middleware (app/api/headers.py) on a bare ASGI app: every header once, HSTS only when
asked, a header the application set is kept, a new nonce per request, the body passed on message by message."""

from __future__ import annotations

from typing import Any

from starlette.types import Message, Receive, Scope, Send

from app.api.headers import HSTS, NONCE_STATE, SecurityHeaders, content_security_policy


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """A streaming response in two chunks; it notes the nonce it was given and sets its own Referrer-Policy."""
    scope["seen_nonce"] = scope["state"][NONCE_STATE]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"referrer-policy", b"no-referrer")]})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"b", "more_body": False})


async def _call(app: Any, path: str = "/") -> tuple[list[Message], Scope]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "path": path, "method": "GET", "headers": []}
    await app(scope, receive, send)
    return sent, scope


def _headers(message: Message) -> dict[str, str]:
    names = [k.decode() for k, _ in message["headers"]]
    assert len(names) == len(set(names)), names  # each header once
    return {k.decode(): v.decode() for k, v in message["headers"]}


async def test_every_header_once_and_the_body_passed_on_as_it_comes() -> None:
    sent, scope = await _call(SecurityHeaders(_app))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body", "http.response.body"]
    assert [m.get("body") for m in sent[1:]] == [b"a", b"b"]  # two chunks, not one buffered body
    h = _headers(sent[0])
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
    assert h["cross-origin-opener-policy"] == "same-origin" and "camera=()" in h["permissions-policy"]
    assert h["referrer-policy"] == "no-referrer"  # the application's own value is kept
    assert "strict-transport-security" not in h
    assert h["content-security-policy"] == content_security_policy(scope["seen_nonce"], "/")
    assert f"'nonce-{scope['seen_nonce']}'" in h["content-security-policy"]


async def test_hsts_only_when_asked_and_a_new_nonce_each_request() -> None:
    app = SecurityHeaders(_app, hsts=True)
    (first, *_), s1 = await _call(app)
    (second, *_), s2 = await _call(app)
    assert _headers(first)["strict-transport-security"] == HSTS == _headers(second)["strict-transport-security"]
    assert s1["seen_nonce"] != s2["seen_nonce"] and len(s1["seen_nonce"]) >= 22  # 128 bits


def test_the_policy_allows_no_inline_script_and_redoc_alone_gets_its_additions() -> None:
    common = dict(d.split(" ", 1) for d in content_security_policy("n").split("; "))
    assert common["script-src"] == "'self'" and common["style-src"] == "'self' 'nonce-n'"
    assert common["frame-ancestors"] == "'none'" and common["object-src"] == "'none'"
    assert "worker-src" not in common and "unsafe" not in content_security_policy("n")
    redoc = dict(d.split(" ", 1) for d in content_security_policy("n", "/redoc").split("; "))
    assert redoc["worker-src"] == "'self' blob:" and redoc["style-src"].startswith("'self' 'nonce-n' 'sha256-")
    assert redoc["script-src"] == "'self'"


async def test_other_scopes_pass_untouched() -> None:
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["type"])
        assert "state" not in scope

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        return None

    await SecurityHeaders(app)({"type": "lifespan"}, nothing, ignore)
    await SecurityHeaders(app)({"type": "websocket", "path": "/"}, nothing, ignore)
    assert calls == ["lifespan", "websocket"]


async def test_an_unexpected_error_s_500_carries_the_headers_too() -> None:
    import httpx
    from fastapi import FastAPI

    from app.api.headers import install_security_headers
    from app.core.problems import install_problem_handlers

    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    install_security_headers(app, hsts=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/boom")
    assert r.status_code == 500
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
