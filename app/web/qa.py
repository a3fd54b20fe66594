"""QA's deviations: the work list (open first, by age and severity) and a page per deviation, signed to close."""

from __future__ import annotations

from app.web import render

router = render.page_router()
