"""Security headers on every HTTP response (pure ASGI middleware).

Not Starlette's BaseHTTPMiddleware: that one runs the response through its own stream, and the live stream (SSE)
must reach the client chunk by chunk. This middleware only adds headers to the `http.response.start` message as
it goes by; the body is never touched.

Every response gets the same set (HTML pages, fragments, static files, JSON, problem JSON, the SSE stream):

- `Content-Security-Policy`: scripts only from the service's own files (no inline script, no eval), styles from
  its own files plus `<style>` elements carrying this response's nonce (the batch record page's print rules;
  ReDoc's generated styles); no `style=` attribute in any template (styles set through the CSSOM are allowed);
  fetch/EventSource to the service only; no plugins, no `<base>`, forms post to the service only; never framed.
  `/redoc` alone may also start a worker from a `blob:` URL (ReDoc's search index) and has two fixed style
  sheets of ReDoc's allowed by their hashes.
- `X-Frame-Options: DENY` (what `frame-ancestors 'none'` says, for browsers without CSP 2).
- `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin`, `Cross-Origin-Opener-Policy: same-origin`,
  `Cross-Origin-Resource-Policy: same-origin`, a `Permissions-Policy` that turns off the powerful features no page
  uses.
- `Strict-Transport-Security` only when the session cookie is marked Secure (`CULTURECTL_COOKIE_SECURE`, i.e. the
  service is reached over HTTPS); over plain HTTP a browser ignores it, and a deployment on HTTP must not pin it.

The nonce is new for each request (128 random bits) and is put in the request's state (`request.state.csp_nonce`)
for the templates.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NONCE_STATE = "csp_nonce"
HSTS = "max-age=31536000"  # one year; no includeSubDomains: other hosts of the domain are not the service's to pin
# The features a page could ask for that none of the dashboard's pages needs (the alarm tone is Web Audio, which
# needs no permission; autoplay stays at its default, the service's own pages).
PERMISSIONS_POLICY = ("accelerometer=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), hid=(), "
                      "magnetometer=(), microphone=(), midi=(), payment=(), serial=(), usb=()")
STATIC_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    # Nothing of a URL leaves the site (an /ack/<token> link, run ids, filters), not even the origin; same-origin
    # requests keep theirs (and so a same-origin POST keeps its real Origin header: no-referrer would send
    # "Origin: null" and spoil an Origin check).
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", PERMISSIONS_POLICY),
)
# Paths whose page needs more than the common policy, and what (directive -> the sources added to it).
_EXTRA: dict[str, dict[str, str]] = {
    "/redoc": {
        "worker-src": "'self' blob:",  # ReDoc builds its search index in a worker made from a Blob
        # the two <style> elements ReDoc's bundle adds as it loads, before it knows the nonce: its scroll bars'
        # fixed style sheet (perfect-scrollbar), and that element while still empty
        "style-src": "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc=' "
                     "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
    },
}


def new_nonce() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode("ascii")


def content_security_policy(nonce: str, path: str = "/") -> str:
    """The Content-Security-Policy of a response to `path`, with this response's style nonce."""
    directives = {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": f"'self' 'nonce-{nonce}'",
        "img-src": "'self' data:",  # data: the empty favicon, Swagger UI's inline SVG icons
        "font-src": "'self'",
        "connect-src": "'self'",
        "object-src": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
    }
    for name, sources in _EXTRA.get(path, {}).items():
        directives[name] = f"{directives[name]} {sources}" if name in directives else sources
    return "; ".join(f"{name} {value}" for name, value in directives.items())


class SecurityHeaders:
    """Adds the headers above to each HTTP response start; a header the application set itself is kept."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False,
                 policy: Callable[[str, str], str] = content_security_policy) -> None:
        self.app = app
        self._policy = policy
        fixed = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in STATIC_HEADERS]
        if hsts:
            fixed.append((b"strict-transport-security", HSTS.encode("latin-1")))
        self._fixed = fixed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        nonce = new_nonce()
        scope.setdefault("state", {})[NONCE_STATE] = nonce
        csp = self._policy(nonce, scope.get("path", "/")).encode("latin-1")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                for name, value in (*self._fixed, (b"content-security-policy", csp)):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_security_headers(app: FastAPI, *, hsts: bool) -> None:
    """Around the whole middleware stack, Starlette's own error middleware included: an unexpected error's 500
    carries the headers too (a middleware added the usual way sits inside that one)."""
    build = app.build_middleware_stack

    def build_with_headers() -> ASGIApp:
        return SecurityHeaders(build(), hsts=hsts)

    app.build_middleware_stack = build_with_headers  # type: ignore[method-assign]
