"""Which leases a replica claims and which it hands over: a pure function of the lease table and the live replicas.

Devices spread over the live replicas: each replica holds at most its fair share, ceil(devices / live replicas).
A replica below its share claims free leases (never held, released, or expired), in an order of its own (a hash of
its id and the lease's name) so replicas that start together reach for different devices. A replica above its
share (another one joined) hands over one lease per pass, and only while some live replica is below its share, so
a join moves devices one at a time and a balanced cluster never churns. The leader lease goes to whoever finds it
free first. An expired lease whose holder is still live (its heartbeat is recent: the database was down for
everyone and it is renewing again) stays its holder's.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEADER = "leader"
DEVICE_PREFIX = "device:"


def device_lease(device: str) -> str:
    return f"{DEVICE_PREFIX}{device}"


def lease_device(name: str) -> str | None:
    return name[len(DEVICE_PREFIX):] if name.startswith(DEVICE_PREFIX) else None


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A lease as the last pass read it: who holds it (None: nobody) and whether it has expired."""

    holder: str | None
    expired: bool

    @property
    def free(self) -> bool:
        return self.holder is None or self.expired


@dataclass(frozen=True, slots=True)
class Plan:
    claim: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


def fair_share(leases: int, live: int) -> int:
    return math.ceil(leases / max(1, live))


def _order(me: str, name: str) -> bytes:
    return hashlib.sha256(f"{me}\x00{name}".encode()).digest()


def plan(me: str, leases: Mapping[str, LeaseView], live: Sequence[str], *, stopping: bool = False) -> Plan:
    """What replica `me` claims and releases now. `live` are the live replicas' ids (`me` among them unless it is
    stopping); a stopping replica claims nothing and releases everything it holds."""
    mine = sorted(n for n, v in leases.items() if v.holder == me)
    if stopping:
        return Plan((), tuple(mine))
    members = set(live) | {me}
    devices = {n: v for n, v in leases.items() if lease_device(n) is not None}
    share = fair_share(len(devices), len(members))
    held = [n for n in mine if n in devices]
    claim: list[str] = []

    def claimable(v: LeaseView) -> bool:
        # an expired lease of a live replica is its own to renew (the database was down for everyone): not taken
        return v.free and v.holder != me and (v.holder is None or v.holder not in members)

    if LEADER in leases and claimable(leases[LEADER]):
        claim.append(LEADER)
    free = sorted((n for n, v in devices.items() if claimable(v)), key=lambda n: _order(me, n))
    claim += free[:max(0, share - len(held))]
    release: list[str] = []
    if len(held) > share:
        counts = {m: 0 for m in members}
        for v in devices.values():
            if v.holder in counts and not v.expired:
                counts[v.holder] += 1
        if any(c < share for m, c in counts.items() if m != me):
            release.append(max(held, key=lambda n: _order(me, n)))
    return Plan(tuple(claim), tuple(release))
