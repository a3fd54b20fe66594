"""HTTP request counters by route template, method and status, and a latency histogram (pure ASGI middleware).

Not Starlette's BaseHTTPMiddleware: that one runs the response through its own stream, and the live stream (SSE)
must reach the client chunk by chunk. This middleware only watches the `http.response.start` message go by.

- A request is counted once, when its response starts (its status is known then), under the matched route's path
  template (`/api/v1/runs/{run_id}`, never the raw path: the label set stays bounded); a request no route matched
  counts as `unmatched`. A request whose handler fails before any response is counted with status 500.
- The duration runs from the request's arrival until the application has sent the whole response. A
  `text/event-stream` response is counted but left out of the histogram: its duration is how long a client kept
  the stream open, not how fast the service answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.histogram import Histogram

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The path template of the route the router chose for this request (`/api/v1/runs/{run_id}`), else
    "unmatched".

    FastAPI includes routers lazily: `scope["route"]` is the route as its router declared it (`/runs/{run_id}`,
    without the prefix it was included under); the full template is in FastAPI's effective route context, read
    first. A mounted application (the dashboard's static files) counts under its mount point (`/static/{path}`).
    """
    fastapi_scope = scope.get("fastapi")
    context = fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    path = getattr(context, "path", None)
    if isinstance(path, str) and path:
        return path
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str) and template:
        return template
    if scope.get("endpoint") is not None and scope.get("app_root_path") is not None:
        return f"{scope.get('root_path', '')}/{{path}}"  # matched by a Mount: root_path is its prefix
    return UNMATCHED


class HttpMetrics:
    """The counters the middleware keeps and the metrics collector reads."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = {}  # (route, method, status) -> requests
        self.durations: dict[tuple[str, str], Histogram] = {}  # (route, method) -> seconds

    def count(self, route: str, method: str, status: int) -> None:
        key = (route, method, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def observe(self, route: str, method: str, seconds: float) -> None:
        hist = self.durations.get((route, method))
        if hist is None:
            hist = self.durations[(route, method)] = Histogram()
        hist.observe(seconds)


def install_http_metrics(app: FastAPI) -> HttpMetrics:
    """Count every request of `app` (a FastAPI app) into a new HttpMetrics kept as `app.state.http_metrics`."""
    metrics = HttpMetrics()
    app.state.http_metrics = metrics
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    return metrics


class HttpMetricsMiddleware:
    """Counts every HTTP request into an HttpMetrics (`metrics`, or the one a callable returns)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics | Callable[[], HttpMetrics]) -> None:
        self.app = app
        self._metrics = metrics

    def _target(self) -> HttpMetrics:
        m = self._metrics
        return m if isinstance(m, HttpMetrics) else m()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = str(scope.get("method", "")).upper()
        method = method if method in _METHODS else "other"
        status: int | None = None
        stream = False

        async def watch(message: Message) -> None:
            nonlocal status, stream
            if message["type"] == "http.response.start" and status is None:
                status = int(message["status"])
                content_type = b""
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type":
                        content_type = value
                stream = content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"
                self._target().count(route_template(scope), method, status)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if status is None:  # the server answers 500 outside this middleware
                self._target().count(route_template(scope), method, 500)
            raise
        if status is not None and not stream:
            self._target().observe(route_template(scope), method, time.perf_counter() - started)
