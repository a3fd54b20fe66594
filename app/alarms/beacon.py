"""The alarm beacon: a device's `alarm_beacon` point (a beacon or horn) is on while any high-priority alarm is
unacknowledged, so an alarm reaches a person in the room at night even with no screen watched.

- `decide` is the pure rule: the high-priority alarms whose status is active_unack or returned_unack. Shelved,
  suppressed by design and out of service alarms do not count (their status is that mode), nor do acknowledged
  ones.
- `Beacon.run` applies it on an interval: for each device with a point playing the role, it commands 1 or 0
  through the one supervised write path (`SetpointService.command`, source "alarm", actor the service itself), so
  each switch is checked, written, read back, recorded in `setpoint_command` and audited (`device.setpoint`), with
  a reason naming the alarms that switched it on.
- A command is sent when the wanted state differs from the last confirmed one, at start-up (whatever the beacon
  shows, it is driven to the current wanted state) and each time the device comes back online (the last command
  may have been lost with the link). An offline device is not commanded: its return is.
- A failed command (refused, not confirmed, the database down) is logged once per outage and retried after a
  capped exponential backoff; it never stops the loop. The beacon keeps its last state when the service stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from app.alarms.journal import Alarm
from app.alarms.model import AlarmStatus, Priority
from app.auth.principal import SYSTEM
from app.control.setpoints import SetpointRequest, SetpointService
from app.core.outage import OutageLog
from app.devices.hub import DeviceHub
from drivers.base import DeviceState
from drivers.devices import DeviceConfig
from drivers.roles import ALARM_BEACON

log = logging.getLogger("culturectl.alarms")

UNACKNOWLEDGED: frozenset[AlarmStatus] = frozenset({AlarmStatus.ACTIVE_UNACK, AlarmStatus.RETURNED_UNACK})
NAMED_IN_REASON = 5  # alarm ids a reason lists before "and N more"


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether the beacon is on, and the alarms that switch it on (sorted ids)."""

    on: bool
    alarms: tuple[str, ...] = ()

    @property
    def value(self) -> float:
        """The value written to the point: 1.0 on, 0.0 off."""
        return 1.0 if self.on else 0.0

    @property
    def reason(self) -> str:
        """What the command records: which alarms switched it on, or that none does."""
        if not self.on:
            return "beacon off: no high-priority alarm unacknowledged"
        n = len(self.alarms)
        named = ", ".join(self.alarms[:NAMED_IN_REASON])
        more = f", and {n - NAMED_IN_REASON} more" if n > NAMED_IN_REASON else ""
        return f"beacon on: {n} high-priority alarm{'s' if n != 1 else ''} unacknowledged ({named}{more})"


def decide(alarms: Iterable[Alarm]) -> Decision:
    """On while any high-priority alarm is active_unack or returned_unack."""
    waiting = sorted(a.id for a in alarms
                     if a.priority() == Priority.HIGH.value and a.state.status in UNACKNOWLEDGED)
    return Decision(bool(waiting), tuple(waiting))


@dataclass
class _Target:
    """One device's beacon point and what is known of it."""

    device: str
    point: str
    outage: OutageLog
    confirmed: bool | None = None  # the last state the device confirmed; None: unknown (start-up, link back)
    online: bool = False
    failures: int = 0
    retry_at: float = 0.0  # loop time before which a failed command is not tried again


@dataclass
class Beacon:
    """Drives every `alarm_beacon` point to `decide(alarms())` through the setpoint service."""

    alarms: Callable[[], Iterable[Alarm]]
    setpoints: SetpointService
    hub: Callable[[], DeviceHub | None]
    devices: Sequence[DeviceConfig]
    interval: float = 0.5  # wall seconds between passes
    backoff_initial: float = 1.0  # wall seconds after the first failure of a command
    backoff_max: float = 30.0
    targets: list[_Target] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: {"commands": 0, "confirmed": 0, "failed": 0})

    def __post_init__(self) -> None:
        for device in self.devices:
            point = device.role_point(ALARM_BEACON)
            if point is not None:
                self.targets.append(_Target(device.name, point.name, OutageLog(
                    log, f"alarm beacon {device.name}.{point.name}: the command failed")))

    def backoff(self, failures: int) -> float:
        """Wall seconds before the next attempt after `failures` failed commands in a row."""
        return float(min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, failures - 1)))

    async def step(self) -> Decision:
        """One pass: decide, then command each online beacon whose confirmed state is not the wanted one."""
        decision = decide(self.alarms())
        hub = self.hub()
        now = asyncio.get_running_loop().time()
        due: list[_Target] = []
        for t in self.targets:
            online = hub is not None and hub.state(t.device) is DeviceState.ONLINE
            if online and not t.online:  # up for the first time, or back: what it shows is not known
                t.confirmed, t.failures, t.retry_at = None, 0, 0.0
            t.online = online
            if online and t.confirmed != decision.on and now >= t.retry_at:
                due.append(t)
        if due:
            await asyncio.gather(*(self._command(t, decision) for t in due))
        return decision

    async def _command(self, t: _Target, decision: Decision) -> None:
        self.stats["commands"] += 1
        body = SetpointRequest(point=t.point, value=decision.value, reason=decision.reason)
        try:
            await self.setpoints.command(t.device, body, principal=SYSTEM, source="alarm")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused, not confirmed, or the database down: recorded where it could be
            self.stats["failed"] += 1
            t.confirmed = None  # a write may have reached the device; the next success settles it
            t.failures += 1
            t.retry_at = asyncio.get_running_loop().time() + self.backoff(t.failures)
            t.outage.failed(exc)
            return
        self.stats["confirmed"] += 1
        t.confirmed, t.failures, t.retry_at = decision.on, 0, 0.0
        t.outage.ok()
        log.info("%s.%s: %s", t.device, t.point, decision.reason)

    async def run(self) -> None:
        """Pass after pass until cancelled; an unexpected error is logged and the loop goes on."""
        if not self.targets:
            return  # no device has a beacon
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("alarm beacon pass failed; retrying")
            await asyncio.sleep(self.interval)
