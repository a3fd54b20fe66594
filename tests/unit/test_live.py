"""The live hub: a slow client gets the latest reading per channel but every step transition."""

from __future__ import annotations

import asyncio

from app.core.live import LiveEvent, LiveHub


async def _drain(hub: LiveHub, publish: list[tuple[str, str, dict[str, object]]]) -> list[LiveEvent]:
    got: list[LiveEvent] = []
    ready = asyncio.Event()

    async def consume() -> None:
        agen = hub.subscribe()
        first = asyncio.ensure_future(agen.__anext__())
        await asyncio.sleep(0)  # the subscription is registered before anything is published
        ready.set()
        got.append(await first)
        async for event in agen:
            got.append(event)

    task = asyncio.create_task(consume())
    await ready.wait()
    for kind, key, data in publish:  # all published before the slow client reads anything
        hub.publish(kind, key, data)
    await asyncio.sleep(0.01)
    hub.close()
    await asyncio.wait_for(task, timeout=2)
    return got


async def test_readings_collapse_per_channel_but_transitions_are_all_delivered() -> None:
    hub = LiveHub()
    events = await _drain(hub, [
        ("reading", "incubator-1.temperature", {"value": 36.0}),
        ("step", "1:feed_day3", {"new": "open"}),
        ("reading", "incubator-1.temperature", {"value": 37.0}),
        ("step", "1:feed_day3", {"new": "due"}),
    ])
    readings = [e.data["value"] for e in events if e.kind == "reading"]
    steps = [e.data["new"] for e in events if e.kind == "step"]
    assert readings == [37.0]
    assert steps == ["open", "due"]
    assert [e.id for e in events] == sorted(e.id for e in events)
