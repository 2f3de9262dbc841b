"""The OpenAPI docs, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served without internet.

FastAPI's own pages load their scripts from a CDN, so offline they are blank. These pages load
the same scripts from ``vendor/`` (Swagger UI and ReDoc as published on npm, unmodified; the
versions, sources and licences are in ``vendor/README.md``), served at ``/docs/assets``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from broker.api.auth import public

__all__ = ["ASSETS", "router"]

ASSETS = Path(__file__).parent / "vendor"
_PREFIX = "/docs/assets"

router = APIRouter(include_in_schema=False, dependencies=[Depends(public)])


def _schema_url(request: Request) -> str:
    url: str = request.app.openapi_url
    return url


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over ``/openapi.json``, its assets from Passerelle."""
    return get_swagger_ui_html(
        openapi_url=_schema_url(request),
        title=f"{request.app.title}: API",
        swagger_js_url=f"{_PREFIX}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{_PREFIX}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{_PREFIX}/favicon.svg",
        # The validator badge would send the schema's URL to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over ``/openapi.json``, its script from Passerelle and no web fonts."""
    return get_redoc_html(
        openapi_url=_schema_url(request),
        title=f"{request.app.title}: API",
        redoc_js_url=f"{_PREFIX}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{_PREFIX}/favicon.svg",
        with_google_fonts=False,
    )
