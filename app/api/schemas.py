"""Response models of the API (named <Thing>Public, as the routers return them)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel


class PointPublic(BaseModel):
    name: str
    unit: str
    kind: str
    writable: bool
    min: float | None = None
    max: float | None = None
    description: str = ""


class DevicePublic(BaseModel):
    name: str
    kind: str
    protocol: str
    endpoint: str
    description: str
    state: str
    state_since: datetime | None
    last_reading_time: datetime | None = None
    last_error: str | None = None
    points: list[PointPublic]


class LatestValue(BaseModel):
    time: datetime
    value: float | None
    quality: str


class ChannelPublic(BaseModel):
    id: int
    key: str
    device: str
    name: str
    unit: str
    kind: str
    latest: LatestValue | None = None


class TelemetryPoint(BaseModel):
    """A raw sample (value, quality) or a bucket (avg, min, max, n)."""

    time: datetime
    value: float | None = None
    quality: str | None = None
    avg: float | None = None
    min: float | None = None
    max: float | None = None
    n: int | None = None


class TelemetryPublic(BaseModel):
    channel: ChannelPublic
    start: datetime
    end: datetime
    bucket: timedelta | None
    max_points: int
    points: list[TelemetryPoint]


class Health(BaseModel):
    status: str
