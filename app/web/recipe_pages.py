"""Recipes: released versions with hash and signatures, a readable view of each, and a side-by-side diff of two."""

from __future__ import annotations

from app.web import render

router = render.page_router()
