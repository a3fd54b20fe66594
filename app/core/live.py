"""Fan-out of live events (readings, device states) to SSE subscribers.

Every event gets an increasing integer id; the hub keeps the last `history` events so a client that
reconnects with Last-Event-ID gets what it missed. Each subscriber has one bounded queue whose
overflow policy is "latest wins" for snapshot kinds (`collapsible`: a channel's reading, a device's
state): a newer event with the same key replaces a pending one. Transitions (a step's status, a
deviation, a run's state) are never replaced: each is delivered. Past `max_pending` the oldest pending
event is dropped and counted. Publishing never blocks and never awaits.

With a relay attached (`attach`; app/cluster/events.py: several replicas on one database) `publish` hands the
event to the relay instead: the relay shares it through the database, and every replica's relay hands it back
with its cluster-wide id through `deliver`, so every replica shows the same events with the same ids in the same
order. A client resuming from an id older than the local history is caught up by the relay (`Relay.backfill`).
Without a relay the hub is what it always was: in-process only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event on the stream; `key` decides what a newer event replaces."""

    id: int
    kind: str
    key: str
    data: dict[str, Any]


EventFilter = Callable[[LiveEvent], bool]


class Relay(Protocol):
    """Where an attached hub's events go, and where a resuming client's missed events come from."""

    def send(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Take an event to share; never blocks, never awaits (it comes back through `LiveHub.deliver`)."""

    async def backfill(self, after: int) -> list[LiveEvent]:
        """The events after id `after`, in id order (snapshot kinds may be collapsed to the latest per key), for a
        client whose resume point the hub's history no longer reaches; empty when they cannot be read."""


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
        self._relay: Relay | None = None
        self.published = 0  # events published on this hub (with a relay: handed to it)
        self.delivered = 0  # events offered to this hub's subscribers
        self.last_id = 0  # the newest id delivered here
        self._closed = False

    @property
    def relay(self) -> Relay | None:
        return self._relay

    def attach(self, relay: Relay | None) -> None:
        """From now on `publish` hands events to `relay` (None: deliver in-process again)."""
        self._relay = relay

    def is_collapsible(self, kind: str) -> bool:
        """A snapshot kind: a newer event with the same key replaces an older one."""
        return kind in self._collapsible

    def make_event(self, event_id: int, kind: str, key: str, data: dict[str, Any]) -> LiveEvent:
        """The event as subscribers get it: a snapshot kind keys on what it describes (a newer one replaces
        it), a transition keys on itself."""
        event_key = f"{kind}:{key}" if kind in self._collapsible else f"{kind}:#{event_id}"
        return LiveEvent(event_id, kind, event_key, data)

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "delivered": self.delivered,
            "subscribers": len(self._subscribers),
            "dropped": sum(s.dropped for s in self._subscribers),
            "replaced": sum(s.replaced for s in self._subscribers),
        }

    def publish(self, kind: str, key: str, data: dict[str, Any]) -> LiveEvent | None:
        """Give the event an id, keep it in history, offer it to every subscriber; with a relay attached, hand it
        to the relay instead (None: its id is given when the relay delivers it)."""
        self.published += 1
        if self._relay is not None:
            self._relay.send(kind, key, data)
            return None
        event = self.make_event(next(self._ids), kind, key, data)
        self._offer(event)
        return event

    def deliver(self, events: Iterable[tuple[int, str, str, dict[str, Any]]]) -> list[LiveEvent]:
        """Events (id, kind, key, data) with ids given elsewhere (the relay): kept in history, offered to every
        subscriber, in the order given."""
        out = [self.make_event(event_id, kind, key, data) for event_id, kind, key, data in events]
        for event in out:
            self._offer(event)
        return out

    def next_local_id(self) -> int:
        """An id for an event delivered here only (the relay while the database is down): after every id
        delivered so far, and microseconds since the epoch when that is larger."""
        return max(self.last_id + 1, int(time.time() * 1_000_000))

    def _offer(self, event: LiveEvent) -> None:
        self._history.append(event)
        self.delivered += 1
        if event.id > self.last_id:
            self.last_id = event.id
        for sub in self._subscribers:
            sub.offer(event)

    def close(self) -> None:
        """Wake every subscriber so open streams end (service shutdown)."""
        self._closed = True
        for sub in self._subscribers:
            sub.wakeup.set()

    async def subscribe(
        self, accepts: EventFilter | None = None, last_event_id: int | None = None
    ) -> AsyncIterator[LiveEvent]:
        """Yield events from now on (after `last_event_id` first, from history) until the hub closes.

        With a relay attached, a `last_event_id` older than the oldest event in history (a client that was
        connected to another replica, or one that fell behind a burst) is caught up from the relay first.
        """
        sub = Subscriber(self._max_pending, accepts or (lambda _e: True))
        # Register before replaying so nothing published in between is lost; replay skips what the
        # queue will deliver anyway by id.
        self._subscribers.add(sub)
        try:
            replayed = -1
            if last_event_id is not None:
                after = last_event_id
                relay = self._relay
                if relay is not None and (not self._history or self._history[0].id > last_event_id):
                    for event in await relay.backfill(last_event_id):
                        if event.id > after:
                            after = event.id
                            if sub.accepts(event):
                                replayed = event.id
                                yield event
                for event in list(self._history):
                    if event.id > after and sub.accepts(event):
                        replayed = event.id
                        yield event
            while not self._closed:
                await sub.wakeup.wait()
                for event in sub.take():
                    if event.id > replayed:
                        yield event
        finally:
            self._subscribers.discard(sub)
