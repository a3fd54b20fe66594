"""A fixed-bucket histogram kept in plain counters, exported at scrape time (no global metrics registry)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

# Seconds: from a fast commit (a few ms) to a request that hangs (10 s).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts of observations per upper bound (`le`), their sum and their number.

    An observation v falls into the first bucket whose bound is >= v; `cumulative` gives the counts as Prometheus
    wants them (each bound counts every observation at or below it, the last one is +Inf).
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        ordered = tuple(float(b) for b in bounds)
        if not ordered or list(ordered) != sorted(set(ordered)) or not all(math.isfinite(b) for b in ordered):
            raise ValueError(f"bucket bounds must be finite, distinct and increasing: {bounds!r}")
        self.bounds = ordered
        self.counts = [0] * (len(ordered) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count of observations <= le) for every bound and +Inf, in order."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else _le(bound), float(total)))
        return out

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy (for /readyz and the metrics collector)."""
        return {"buckets": self.cumulative(), "sum": self.sum, "count": self.count}


def _le(bound: float) -> str:
    return repr(bound) if bound != int(bound) else f"{bound:.1f}"
