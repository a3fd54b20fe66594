"""What the dashboard's title counts and its sound toggle listens for: the alarms waiting for acknowledgement."""

from __future__ import annotations

from typing import Any

import pytest

from app.web import views


@pytest.mark.parametrize(("alarms", "expected"), [
    pytest.param([], {}, id="none"),
    pytest.param([{"id": "a", "priority": "high", "status": "active_unack"}], {"a": "high"}, id="active_unack"),
    pytest.param([{"id": "a", "priority": "low", "status": "returned_unack"}], {"a": "low"}, id="returned_unack"),
    pytest.param([{"id": "a", "priority": "high", "status": s} for s in (
        "active_ack", "normal", "shelved", "suppressed_by_design", "out_of_service")], {}, id="not waiting"),
    pytest.param([{"id": "a", "priority": "high", "status": "active_unack"},
                  {"id": "b", "priority": "medium", "status": "active_ack"},
                  {"id": "c", "priority": "medium", "status": "returned_unack"}], {"a": "high", "c": "medium"},
                 id="mixed"),
])
def test_the_alarms_waiting_for_acknowledgement(alarms: list[dict[str, Any]], expected: dict[str, str]) -> None:
    assert views.unacknowledged(alarms) == expected
