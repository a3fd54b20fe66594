"""The event relay's outgoing queue and payload, without a database: bounded, latest-wins for snapshots when full,
transitions kept; a LiveHub with a relay hands events over instead of delivering them."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from app.cluster.events import EventRelay, decode, encode
from app.core.live import LiveEvent, LiveHub


def _relay(max_pending: int = 5, max_batch: int = 2_000) -> EventRelay:
    return EventRelay(LiveHub(), pool=None, dsn="", replica="r", max_pending=max_pending,  # type: ignore[arg-type]
                      max_batch=max_batch)


def _pending(relay: EventRelay) -> list[tuple[str, str, Any]]:
    return [(e.kind, e.key, e.data) for e in relay._take(len(relay._out))]


def test_below_the_bound_every_event_is_kept_in_order() -> None:
    relay = _relay(max_pending=100)
    for n in range(3):
        relay.send("reading", "a", {"n": n})
    relay.send("step", "s", {"n": 9})
    assert _pending(relay) == [("reading", "a", {"n": 0}), ("reading", "a", {"n": 1}), ("reading", "a", {"n": 2}),
                               ("step", "s", {"n": 9})]
    assert relay.dropped == 0


def test_when_full_a_snapshot_replaces_its_key_and_transitions_are_kept() -> None:
    relay = _relay(max_pending=4)
    relay.send("reading", "a", {"n": 1})
    relay.send("step", "s", {"n": 1})
    relay.send("reading", "b", {"n": 1})
    relay.send("reading", "a", {"n": 2})  # 4 pending: full
    relay.send("reading", "a", {"n": 3})  # replaces a's newest pending reading (n=2)
    relay.send("step", "s", {"n": 2})  # a transition: the oldest snapshot (a, n=1) goes
    relay.send("reading", "c", {"n": 1})  # no c pending: the oldest snapshot (b) goes
    assert _pending(relay) == [("step", "s", {"n": 1}), ("reading", "a", {"n": 3}), ("step", "s", {"n": 2}),
                               ("reading", "c", {"n": 1})]
    assert relay.dropped == 3


def test_transitions_are_never_dropped() -> None:
    relay = _relay(max_pending=2)
    for n in range(5):
        relay.send("alarm", "x", {"n": n})
    relay.send("reading", "a", {"n": 0})  # nothing but transitions pending: the snapshot is the one dropped
    assert [d["n"] for _k, _key, d in _pending(relay)] == [0, 1, 2, 3, 4]
    assert relay.dropped == 1


def test_a_batch_takes_at_most_max_batch() -> None:
    relay = _relay(max_pending=100, max_batch=3)
    for n in range(7):
        relay.send("step", str(n), {"n": n})
    assert relay._full.is_set()
    assert [e.data["n"] for e in relay._take(relay.max_batch)] == [0, 1, 2]
    assert len(relay._out) == 4


class Colour(Enum):
    RED = "red"


def test_the_payload_reads_as_the_stream_would_show_it() -> None:
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    relay = _relay()
    relay.send("deviation", "1", {"at": at, "n": Decimal("3"), "x": Decimal("1.5"), "c": Colour.RED, "t": (1, 2)})
    token, _t, events = decode(encode("tok", relay._take(10)))
    assert token == "tok"
    assert events == [("deviation", "1", {"at": at.isoformat(), "n": 3, "x": 1.5, "c": "red", "t": [1, 2]})]


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    def send(self, kind: str, key: str, data: dict[str, Any]) -> None:
        self.sent.append((kind, key, data))

    async def backfill(self, after: int) -> list[LiveEvent]:
        return []


def test_a_hub_with_a_relay_hands_events_over_and_delivers_what_comes_back() -> None:
    hub = LiveHub()
    relay = _Recorder()
    hub.attach(relay)
    assert hub.publish("step", "1:feed", {"new": "due"}) is None
    assert relay.sent == [("step", "1:feed", {"new": "due"})]
    assert hub.stats()["delivered"] == 0
    out = hub.deliver([(41, "step", "1:feed", {"new": "due"}), (42, "reading", "a.b", {"value": 1.0})])
    assert [(e.id, e.key) for e in out] == [(41, "step:#41"), (42, "reading:a.b")]
    assert hub.last_id == 42 and hub.next_local_id() > 42
    hub.attach(None)
    event = hub.publish("step", "1:feed", {"new": "open"})
    assert event is not None and event.key == f"step:#{event.id}"
