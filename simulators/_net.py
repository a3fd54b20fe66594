"""Network helpers shared by the simulator servers."""

from __future__ import annotations

import socket


def pick_free_port(host: str) -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
