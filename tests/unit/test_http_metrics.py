"""The HTTP metrics middleware: requests counted by route template, method and status; the latency histogram
without SSE streams; a stream passed through chunk by chunk; a failing handler counted as 500."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.http_metrics import UNMATCHED, HttpMetrics, HttpMetricsMiddleware
from app.core.histogram import Histogram
from app.main import create_app


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_the_real_app_counts_route_templates_methods_and_statuses() -> None:
    app = create_app()  # no lifespan: no database; the routes answer what they can without one
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://culturectl.test") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/api/v1/runs/5")).status_code == 401  # no credentials
        assert (await client.get("/api/v1/runs/7")).status_code == 401
        assert (await client.get("/no/such/page")).status_code == 404
        assert (await client.delete("/healthz")).status_code == 405
        assert (await client.get("/static/app.css")).status_code == 200
        assert (await client.request("BREW", "/healthz")).status_code == 405
        first = (await client.get("/metrics")).text  # counted after its own answer
        text = (await client.get("/metrics")).text
    metrics = app.state.http_metrics
    assert metrics.requests == {
        ("/healthz", "GET", "200"): 1,
        ("/api/v1/runs/{run_id}", "GET", "401"): 2,  # the template, not the two raw paths
        (UNMATCHED, "GET", "404"): 1,
        ("/healthz", "DELETE", "405"): 1,
        ("/static/{path}", "GET", "200"): 1,
        ("/healthz", "other", "405"): 1,  # a method outside the known set cannot grow the label set
        ("/metrics", "GET", "200"): 2,
    }
    requests = _samples(text, "culturectl_http_requests_total")
    assert requests[(("method", "GET"), ("route", "/api/v1/runs/{run_id}"), ("status", "401"))] == 2
    assert requests[(("method", "GET"), ("route", "/metrics"), ("status", "200"))] == 1  # this scrape not yet
    assert (("method", "GET"), ("route", "/metrics"), ("status", "200")) not in _samples(
        first, "culturectl_http_requests_total")
    counts = _samples(text, "culturectl_http_request_duration_seconds_count")
    assert counts[(("method", "GET"), ("route", "/api/v1/runs/{run_id}"))] == 2
    inf = _samples(text, "culturectl_http_request_duration_seconds_bucket")
    assert inf[(("le", "+Inf"), ("method", "GET"), ("route", "/api/v1/runs/{run_id}"))] == 2


async def _call(app: Any, path: str, messages: list[dict[str, Any]]) -> None:
    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never sends a body nor leaves
        return {}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app(scope, receive, send)


async def test_an_sse_stream_is_counted_when_it_starts_passed_through_unbuffered_and_not_timed() -> None:
    release = asyncio.Event()
    first_chunk_out = asyncio.Event()

    async def stream_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"event: hello\ndata: 1\n\n", "more_body": True})
        first_chunk_out.set()
        await release.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    metrics = HttpMetrics()
    middleware = HttpMetricsMiddleware(stream_app, metrics)
    messages: list[dict[str, Any]] = []
    task = asyncio.create_task(_call(middleware, "/api/v1/stream", messages))
    await asyncio.wait_for(first_chunk_out.wait(), 5)
    # the first event reached the client while the stream is still open, and the request is counted already
    assert [m["type"] for m in messages] == ["http.response.start", "http.response.body"]
    assert messages[1]["body"].startswith(b"event: hello")
    assert metrics.requests == {(UNMATCHED, "GET", "200"): 1}
    release.set()
    await asyncio.wait_for(task, 5)
    assert metrics.durations == {}  # a stream's duration is how long the client stayed, not a latency


async def test_a_handler_that_fails_before_answering_counts_as_500_and_the_error_goes_on() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("handler bug")

    metrics = HttpMetrics()
    with pytest.raises(RuntimeError, match="handler bug"):
        await _call(HttpMetricsMiddleware(broken, lambda: metrics), "/x", [])
    assert metrics.requests == {(UNMATCHED, "GET", "500"): 1} and metrics.durations == {}


async def test_lifespan_and_other_scopes_pass_through_uncounted() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    metrics = HttpMetrics()
    await HttpMetricsMiddleware(app, metrics)({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan"] and metrics.requests == {}


def test_the_histogram_counts_each_observation_in_the_first_bucket_at_or_above_it() -> None:
    h = Histogram((0.1, 1.0, 10.0))
    for v in (0.05, 0.1, 0.5, 1.0, 20.0, float("nan")):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("10.0", 4.0), ("+Inf", 5.0)]
    assert h.count == 5 and h.sum == pytest.approx(21.65)
    assert h.snapshot()["buckets"][-1] == ("+Inf", 5.0)
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 0.5))
