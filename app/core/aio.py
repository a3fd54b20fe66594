"""Waiting in loops that are cancelled to stop.

`asyncio.wait_for` on Python 3.11 can swallow a cancellation that arrives as the awaited event is set (the result
wins and the task goes on as if it had not been cancelled), so a loop that waits with it may never stop.
`asyncio.timeout` does not: loops wait with `wait_event`.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds have passed; whether it is set."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return False
    return True
