"""People (admin): users, API keys, sessions in use, and the notification rules and on-call rotas editor."""

from __future__ import annotations

from app.web import render

router = render.page_router()
