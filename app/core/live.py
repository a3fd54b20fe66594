"""Fan-out of live events (readings, device states) to SSE subscribers.

Every event gets an increasing integer id; the hub keeps the last `history` events so a client that
reconnects with Last-Event-ID gets what it missed. Each subscriber has one bounded queue whose
overflow policy is "latest wins" for snapshot kinds (`collapsible`: a channel's reading, a device's
state): a newer event with the same key replaces a pending one. Transitions (a step's status, a
deviation, a run's state) are never replaced: each is delivered. Past `max_pending` the oldest pending
event is dropped and counted. Publishing never blocks and never awaits.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event on the stream; `key` decides what a newer event replaces."""

    id: int
    kind: str
    key: str
    data: dict[str, Any]


EventFilter = Callable[[LiveEvent], bool]


@dataclass(eq=False)
class Subscriber:
    """One SSE client's bounded queue of pending events (latest wins per key)."""

    max_pending: int
    accepts: EventFilter
    pending: OrderedDict[str, LiveEvent] = field(default_factory=OrderedDict)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    replaced: int = 0

    def offer(self, event: LiveEvent) -> None:
        if not self.accepts(event):
            return
        if event.key in self.pending:
            del self.pending[event.key]
            self.replaced += 1
        self.pending[event.key] = event
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
            self.dropped += 1
        self.wakeup.set()

    def take(self) -> list[LiveEvent]:
        events = list(self.pending.values())
        self.pending.clear()
        self.wakeup.clear()
        return events


class LiveHub:
    """Publishes events to every subscriber; keeps a short history for resuming clients."""

    def __init__(self, history: int = 5_000, max_pending: int = 1_000,
                 collapsible: frozenset[str] = frozenset({"reading", "device_state"})) -> None:
        # Ids start from the wall clock in microseconds so they keep increasing across restarts and a
        # client resuming with an id from before a restart is not mistaken for one from the future.
        self._ids = itertools.count(int(time.time() * 1_000_000))
        self._history: deque[LiveEvent] = deque(maxlen=history)
        self._subscribers: set[Subscriber] = set()
        self._max_pending = max_pending
        self._collapsible = collapsible
        self.published = 0
        self._closed = False

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "subscribers": len(self._subscribers),
            "dropped": sum(s.dropped for s in self._subscribers),
            "replaced": sum(s.replaced for s in self._subscribers),
        }

    def publish(self, kind: str, key: str, data: dict[str, Any]) -> LiveEvent:
        """Give the event an id, keep it in history, offer it to every subscriber."""
        event_id = next(self._ids)
        # A snapshot kind keys on what it describes (a newer one replaces it); a transition keys on itself.
        event_key = f"{kind}:{key}" if kind in self._collapsible else f"{kind}:#{event_id}"
        event = LiveEvent(event_id, kind, event_key, data)
        self._history.append(event)
        self.published += 1
        for sub in self._subscribers:
            sub.offer(event)
        return event

    def close(self) -> None:
        """Wake every subscriber so open streams end (service shutdown)."""
        self._closed = True
        for sub in self._subscribers:
            sub.wakeup.set()

    async def subscribe(
        self, accepts: EventFilter | None = None, last_event_id: int | None = None
    ) -> AsyncIterator[LiveEvent]:
        """Yield events from now on (after `last_event_id` first, from history) until the hub closes."""
        sub = Subscriber(self._max_pending, accepts or (lambda _e: True))
        # Register before replaying so nothing published in between is lost; replay skips what the
        # queue will deliver anyway by id.
        self._subscribers.add(sub)
        try:
            replayed = -1
            if last_event_id is not None:
                for event in list(self._history):
                    if event.id > last_event_id and sub.accepts(event):
                        replayed = event.id
                        yield event
            while not self._closed:
                await sub.wakeup.wait()
                for event in sub.take():
                    if event.id > replayed:
                        yield event
        finally:
            self._subscribers.discard(sub)
