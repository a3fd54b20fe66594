"""Small helpers shared by the tests: free ports, waiting for a state with a deadline, SSE parsing, and a
PostgreSQL server a test can stop and start."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from app import db

T = TypeVar("T")


class OwnServer:
    """An embedded PostgreSQL a test can stop and start at will (outages); it keeps its address."""

    def __init__(self, data_dir: Path) -> None:
        self.server = db.EmbeddedPostgres(data_dir)
        self.dsn = ""

    async def start(self) -> str:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            dsn = await asyncio.to_thread(self.server.start)
        assert not self.dsn or dsn == self.dsn, "the restarted server must keep its address"
        self.dsn = dsn
        return dsn

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        last = result  # type: ignore[assignment]
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


class SSEEvent:
    """One parsed Server-Sent Event."""

    def __init__(self, event: str, data: str, id: str | None) -> None:
        self.event, self.data, self.id = event, data, id

    def json(self) -> object:
        import json

        return json.loads(self.data)

    def __repr__(self) -> str:
        return f"SSEEvent({self.event!r}, id={self.id!r}, data={self.data[:80]!r})"


async def sse_events(response: object) -> AsyncIterator[SSEEvent]:
    """Parse an httpx streaming response as text/event-stream (comments skipped)."""
    event, data, eid = "message", [], None
    async for line in response.aiter_lines():  # type: ignore[attr-defined]
        if line == "":
            if data:
                yield SSEEvent(event, "\n".join(data), eid)
            event, data, eid = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                eid = value

