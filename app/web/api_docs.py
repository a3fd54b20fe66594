"""The API reference pages, served entirely from the package: `/docs` (Swagger UI), `/redoc` (ReDoc) and Swagger
UI's OAuth2 redirect page. FastAPI's own pages load their scripts from a CDN and start them with an inline
script, which the Content-Security-Policy (app/api/headers.py) blocks; these pages load the vendored bundles
(app/web/static/vendor) and start them from /static/api-docs.js. They are public, as the OpenAPI document is.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.api.headers import NONCE_STATE
from app.web.render import HERE

OPENAPI_URL = "/openapi.json"
TEMPLATES = Jinja2Templates(directory=HERE / "templates" / "api_docs")
router = APIRouter(include_in_schema=False)


def _render(request: Request, name: str, title: str) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, {
        "title": title, "openapi_url": OPENAPI_URL, "nonce": getattr(request.state, NONCE_STATE, "")})


@router.get("/docs", response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    return _render(request, "swagger.html", f"{request.app.title} - Swagger UI")


@router.get("/docs/oauth2-redirect", response_class=HTMLResponse)
async def swagger_ui_redirect(request: Request) -> HTMLResponse:
    return _render(request, "oauth2_redirect.html", "Swagger UI: OAuth2 Redirect")


@router.get("/redoc", response_class=HTMLResponse)
async def redoc(request: Request) -> HTMLResponse:
    return _render(request, "redoc.html", f"{request.app.title} - ReDoc")
