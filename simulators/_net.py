"""Network helpers shared by the simulator servers."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Self


def pick_free_port(host: str) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SimulatorServer:
    """What both simulators share: a port chosen once (a restart comes back on it) and start/stop as a context."""

    _server: object | None = None

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        # port 0: choose once, so a restart comes back where clients expect it
        self._port = port or pick_free_port(host)

    @property
    def port(self) -> int:
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
