"""Devices: the list with state and owner, and a page per device (profile, points live, calibration, alarms)."""

from __future__ import annotations

from app.web import render

router = render.page_router()
