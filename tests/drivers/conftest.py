"""Fixtures shared by the driver tests; each module provides its own `sim` (a simulator started once)."""

from __future__ import annotations

import pytest

from simulators._net import SimulatorServer


@pytest.fixture
async def running_sim(sim: SimulatorServer) -> SimulatorServer:
    """The module's simulator, started again if a previous test left it stopped."""
    if not sim.running:
        await sim.start()
    return sim
