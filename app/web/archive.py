"""The runs archive: every run, filtered and paged, each linking to its run page and batch record."""

from __future__ import annotations

from app.web import render

router = render.page_router()
