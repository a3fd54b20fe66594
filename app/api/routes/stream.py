"""Live events over Server-Sent Events: readings and device state changes, with resumable ids.

An open stream of a login session checks that session again every `inactivity.stream_check_seconds` (a heartbeat,
at most 15 s) and ends once a live request of it would be refused: logged out or otherwise ended, expired, its
user disabled or locked, or idle beyond the inactivity limit unless wall screens are kept live. Streams of API
keys are not checked again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.api.deps import RuntimeDep
from app.api.limits import StreamSlotDep
from app.api.security import CurrentPrincipal
from app.auth import inactivity, sessions
from app.auth.principal import Principal
from app.core.live import LiveEvent
from app.core.problems import Problem
from app.runtime import Runtime

router = APIRouter(tags=["live"])
log = logging.getLogger("culturectl.api")

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
    principal: CurrentPrincipal,
) -> AsyncIterator[ServerSentEvent]:
    checked = principal.kind == "user" and principal.token_id is not None
    events = runtime.live.subscribe(request.accepts, request.resume_after).__aiter__()
    pending: asyncio.Task[LiveEvent] | None = None
    try:
        yield ServerSentEvent(comment="culturectl live stream", retry=2000)
        loop = asyncio.get_running_loop()
        rules = inactivity.SessionRules.of(runtime.settings)
        every = inactivity.stream_check_seconds(rules)
        next_check = loop.time() + every
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            if checked:
                done, _ = await asyncio.wait({pending}, timeout=max(0.0, next_check - loop.time()))
                if not done:  # nothing to send for a while: is the session still allowed to listen?
                    if not await _may_go_on(runtime, principal, rules):
                        return
                    next_check = loop.time() + every
                    continue
            try:
                event = await pending
            except StopAsyncIteration:
                return
            pending = None
            if checked and loop.time() >= next_check:  # a busy stream is checked as often
                if not await _may_go_on(runtime, principal, rules):
                    return
                next_check = loop.time() + every
            yield ServerSentEvent(id=str(event.id), event=event.kind, data=event.data)
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        with contextlib.suppress(RuntimeError):
            await events.aclose()  # type: ignore[attr-defined]
        slot.release()


async def _may_go_on(runtime: Runtime, principal: Principal, rules: inactivity.SessionRules) -> bool:
    """The session's check for an open stream; a database that cannot be reached ends nothing (nothing can end a
    session while it is unreachable: the next check decides)."""
    if runtime.pool is None:
        return True
    try:
        async with runtime.pool.acquire(timeout=5) as conn:
            return await sessions.may_stream(conn, principal, rules)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        log.warning("live stream of %s: the session cannot be checked now (%s)", principal.name, type(exc).__name__)
        return True
