"""Live events over Server-Sent Events: readings and device state changes, with resumable ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.api.deps import RuntimeDep
from app.api.limits import StreamSlotDep
from app.core.live import LiveEvent
from app.core.problems import Problem

router = APIRouter(tags=["live"])

KINDS = ("reading", "device_state", "device_check", "step", "deviation", "run", "setpoint", "alarm", "qc_result")


@dataclass(frozen=True)
class StreamRequest:
    """A checked stream request: which events, and from where to resume."""

    channels: frozenset[str] | None
    kinds: frozenset[str] | None
    resume_after: int | None

    def accepts(self, e: LiveEvent) -> bool:
        if self.kinds is not None and e.kind not in self.kinds:
            return False
        return not (self.channels is not None and e.kind == "reading" and e.data.get("channel") not in self.channels)


def _split(text: str | None) -> frozenset[str] | None:
    return frozenset(p.strip() for p in text.split(",") if p.strip()) if text else None


def stream_request(
    runtime: RuntimeDep,
    channels: Annotated[str | None, Query(description="comma-separated channel keys; unset: all")] = None,
    kinds: Annotated[str | None, Query(description=f"comma-separated event kinds: {', '.join(KINDS)}")] = None,
    last_event_id: Annotated[str | None, Header(description="id of the last event the client got")] = None,
    after: Annotated[int | None, Query(description="same as Last-Event-ID, for clients without headers")] = None,
) -> StreamRequest:
    """Validate before the stream starts, so a bad request gets a problem JSON, not a broken stream."""
    wanted_channels, wanted_kinds = _split(channels), _split(kinds)
    if wanted_kinds is not None and not wanted_kinds <= set(KINDS):
        raise Problem(422, "unknown-event-kind", "Unknown event kind",
                      f"unknown kinds {sorted(wanted_kinds - set(KINDS))}; known: {', '.join(KINDS)}")
    if wanted_channels is not None:
        unknown = wanted_channels - set(runtime.channel_ids)
        if unknown:
            raise Problem(422, "unknown-channel", "Unknown channel",
                          f"unknown channel keys: {', '.join(sorted(unknown))}; GET /api/v1/channels lists them")
    resume = after
    if last_event_id is not None:
        try:
            resume = int(last_event_id)
        except ValueError:
            raise Problem(422, "invalid-last-event-id", "Invalid Last-Event-ID",
                          f"Last-Event-ID must be an event id (an integer), got {last_event_id!r}") from None
    return StreamRequest(wanted_channels, wanted_kinds, resume)


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    summary="Live readings and device states (SSE); reconnect with Last-Event-ID to resume",
    responses={422: {"description": "unknown channel or event kind, or a malformed Last-Event-ID"},
               503: {"description": "the database is unavailable, or a cap on open streams is reached (rule "
                                    "sse_streams_per_principal or sse_streams_total, with its limit)"}},
)
async def stream(
    runtime: RuntimeDep, request: Annotated[StreamRequest, Depends(stream_request)], slot: StreamSlotDep,
) -> AsyncIterator[ServerSentEvent]:
    try:
        yield ServerSentEvent(comment="culturectl live stream", retry=2000)
        async for event in runtime.live.subscribe(request.accepts, request.resume_after):
            yield ServerSentEvent(id=str(event.id), event=event.kind, data=event.data)
    finally:
        slot.release()
