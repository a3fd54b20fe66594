"""Channels (one per device point) and their telemetry history, raw or bucketed."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import TypeAdapter, ValidationError

from app.api.deps import ConnectionDep, RuntimeDep, SmallId
from app.api.schemas import ChannelPublic, LatestValue, TelemetryPoint, TelemetryPublic
from app.core.problems import Problem
from app.devices import registry
from app.ingest.history import TooManyPoints, latest_values, query_telemetry
from drivers.base import Quality

router = APIRouter(tags=["telemetry"])

_SHORT_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_TIMEDELTA = TypeAdapter(timedelta)


def parse_bucket(text: str) -> timedelta:
    """'30s', '5m', '1h', '1d', plain seconds, or ISO 8601 ('PT5M')."""
    m = _SHORT_DURATION.match(text.strip())
    if m:
        return timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2)])
    try:
        return _TIMEDELTA.validate_python(text.strip())
    except ValidationError:
        raise Problem(422, "invalid-bucket", "Bucket is not a duration",
                      f"bucket {text!r} is not a duration; use e.g. 30s, 5m, 1h, 1d or PT5M") from None


def _quality_name(q: int | None) -> str | None:
    return None if q is None else Quality(q).name.lower()


def _channel(row: Any, latest: dict[int, Any] | None = None) -> ChannelPublic:
    last = (latest or {}).get(row["id"])
    return ChannelPublic(
        id=row["id"], key=f"{row['device']}.{row['name']}", device=row["device"], name=row["name"],
        unit=row["unit"], kind=row["kind"], role=f"{row['device_class']}.{row['role']}" if row["role"] else None,
        latest=LatestValue(time=last["time"], value=last["value"], quality=_quality_name(last["quality"]) or "")
        if last is not None else None,
    )


@router.get("/channels", response_model=list[ChannelPublic], summary="Every channel with its latest value")
async def list_channels(conn: ConnectionDep) -> list[ChannelPublic]:
    rows = await registry.channels(conn)
    latest = {r["channel_id"]: r for r in await latest_values(conn)}
    return [_channel(r, latest) for r in rows]


@router.get(
    "/channels/{channel_id}/telemetry",
    response_model=TelemetryPublic,
    summary="History of one channel: raw samples, or avg/min/max per bucket",
    responses={400: {"description": "the range holds more points than the limit"},
               404: {"description": "no such channel"}},
)
async def channel_telemetry(
    channel_id: SmallId,
    conn: ConnectionDep,
    runtime: RuntimeDep,
    start: Annotated[datetime | None, Query(description="inclusive, with UTC offset; default end - 1 h")] = None,
    end: Annotated[datetime | None, Query(description="exclusive, with UTC offset; default now")] = None,
    bucket: Annotated[str | None, Query(description="30s, 5m, 1h, 1d or ISO 8601; unset: raw")] = None,
) -> TelemetryPublic:
    row = await registry.channel(conn, channel_id)
    if row is None:
        raise Problem(404, "channel-not-found", "No such channel", f"there is no channel with id {channel_id}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise Problem(422, "naive-time", "Time without offset",
                          f"{name} must include a UTC offset, e.g. 2026-11-21T12:00:00Z")
    end = end or runtime.clock.now()
    start = start or end - timedelta(hours=1)
    if start >= end:
        raise Problem(422, "empty-range", "Empty time range",
                      f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    step = parse_bucket(bucket) if bucket is not None else None
    if step is not None and step <= timedelta(0):
        raise Problem(422, "invalid-bucket", "Bucket is not positive", "bucket must be longer than zero")
    limit = runtime.settings.max_points
    try:
        rows = await query_telemetry(conn, channel_id, start, end, step, limit)
    except TooManyPoints as exc:
        raise Problem(
            400, "too-many-points", "Too many points",
            f"the range {start.isoformat()} .. {end.isoformat()} holds {exc.requested}"
            f"{'+' if step is None else ''} points; at most {exc.limit} are returned per request: use a "
            "larger bucket or a shorter range",
            limit=exc.limit, requested=exc.requested,
        ) from None
    points = [TelemetryPoint(**_point(r)) for r in rows]
    return TelemetryPublic(channel=_channel(row), start=start, end=end, bucket=step, max_points=limit,
                           points=points)


def _point(r: Any) -> dict[str, Any]:
    d = dict(r)
    if "quality" in d:
        d["quality"] = _quality_name(d["quality"])
    return d
