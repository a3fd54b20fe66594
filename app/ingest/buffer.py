"""Bounded in-memory queue of readings between the drivers and the telemetry writer.

Drivers call `put_nowait` from their callbacks: it never blocks and never awaits. When the queue is full
a named overflow policy decides which reading is dropped, and every drop is counted (never silent).
The writer takes readings out in batches with `get_batch`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque

from drivers.base import Reading

log = logging.getLogger("culturectl.ingest")


class OverflowPolicy(enum.StrEnum):
    """What a full buffer drops."""

    DROP_OLDEST = "drop_oldest"
    DROP_NEWEST = "drop_newest"


class ReadingBuffer:
    """A bounded FIFO of readings with an overflow policy and counters.

    Counters: `accepted` (readings put into the queue), `dropped` (readings lost to overflow, whichever
    end they were taken from), `depth` (readings queued now), `high_water` (largest depth seen).
    Meant for one event loop: `put_nowait` from the loop's thread, one consumer awaiting `get_batch`.
    """

    def __init__(self, maxsize: int, policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST) -> None:
        if maxsize < 1:
            raise ValueError(f"buffer maxsize must be >= 1, got {maxsize}")
        self._maxsize = maxsize
        self._policy = OverflowPolicy(policy)
        self._items: deque[Reading] = deque()
        self._accepted = 0
        self._dropped = 0
        self._high_water = 0
        self._overflowing = False
        # the consumer waits until this many readings are queued (set by get_batch)
        self._want = 1
        self._ready: asyncio.Event | None = None

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @property
    def policy(self) -> OverflowPolicy:
        return self._policy

    @property
    def accepted(self) -> int:
        return self._accepted

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def depth(self) -> int:
        return len(self._items)

    @property
    def high_water(self) -> int:
        return self._high_water

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, object]:
        """Counters for /metrics and /readyz."""
        return {
            "accepted": self._accepted,
            "dropped": self._dropped,
            "depth": len(self._items),
            "high_water": self._high_water,
            "maxsize": self._maxsize,
            "policy": self._policy.value,
        }

    def put_nowait(self, reading: Reading) -> None:
        """Queue one reading without waiting; when full, drop one reading per the policy (counted)."""
        items = self._items
        if len(items) >= self._maxsize:
            self._dropped += 1
            if not self._overflowing:
                # log once per overflow episode; the counter carries the rest
                self._overflowing = True
                log.warning(
                    "ingest buffer full (%d readings), policy %s: readings are being dropped",
                    self._maxsize,
                    self._policy.value,
                )
            if self._policy is OverflowPolicy.DROP_NEWEST:
                return
            items.popleft()
        elif self._overflowing and len(items) < self._maxsize // 2:
            self._overflowing = False
            log.info("ingest buffer below half full again; %d readings dropped so far", self._dropped)
        items.append(reading)
        self._accepted += 1
        depth = len(items)
        if depth > self._high_water:
            self._high_water = depth
        ready = self._ready
        if ready is not None and depth >= self._want:
            ready.set()

    def get_nowait(self, max_items: int) -> list[Reading]:
        """Take up to `max_items` readings, oldest first, without waiting."""
        items = self._items
        n = min(max_items, len(items))
        if n == len(items):
            out = list(items)
            items.clear()
            return out
        popleft = items.popleft
        return [popleft() for _ in range(n)]

    async def get_batch(self, max_items: int, timeout: float) -> list[Reading]:
        """Return as soon as `max_items` readings are queued, or after `timeout` s with what is there.

        The result is never longer than `max_items`; it is empty only when nothing arrived within
        `timeout` (so the caller can do other work and ask again).
        """
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        if len(self._items) >= max_items or timeout <= 0:
            return self.get_nowait(max_items)
        if self._ready is None:
            self._ready = asyncio.Event()
        self._ready.clear()
        self._want = max_items
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            pass
        finally:
            self._want = 1
        return self.get_nowait(max_items)
