"""The console's routes: the login page, the language switch and the pages.

``public`` holds what a browser reaches before logging in (the login form, the language switch,
``/`` which leads to the console); ``pages`` holds every page, and the application includes it
behind its page guard (``broker.api.auth.require_session``, which sets ``request.state.session``
and sends anyone without a session to the login page). Pages are HTML shells: their figures come
from the JSON API, which the pages' scripts fetch with the session cookie and, for actions, the
session's CSRF token. No route here is in the OpenAPI schema: they are pages, not the API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from broker.access import (
    CSRF_HEADER,
    SESSION_COOKIE,
    SESSION_TTL_S,
    Session,
    open_session,
    token_matches,
)
from broker.console import i18n
from broker.log import get_logger
from broker.settings import Settings

__all__ = ["LOGIN", "PAGES", "STATIC", "login_redirect", "pages", "path_of", "public"]

LOGIN = "/console/login"
STATIC = Path(__file__).parent / "static"
PAGES = ("overview", "messages", "dead-letters", "refusals", "unmapped")
"""The pages, in the order of the navigation bar; ``overview`` is ``/console/``."""

_log = get_logger(__name__)
_templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every value from the data is escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
    )
)
_HEADERS = {
    # Scripts and styles only from Passerelle itself: no CDN, no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

public = APIRouter(include_in_schema=False)
pages = APIRouter(prefix="/console", include_in_schema=False)


def path_of(page: str) -> str:
    """The URL path of one of :data:`PAGES`."""
    return "/console/" if page == "overview" else f"/console/{page}"


def _language(request: Request) -> str:
    return i18n.choose(request.cookies.get(i18n.COOKIE), request.headers.get("accept-language"))


def _render(
    request: Request,
    template: str,
    *,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    language = _language(request)
    texts = i18n.catalogue(language)
    response = _templates.TemplateResponse(
        request,
        template,
        {
            "lang": language,
            "languages": i18n.LANGUAGES,
            "t": texts.__getitem__,
            "texts": texts,
            "csrf": session.csrf if session else "",
            "csrf_header": CSRF_HEADER,
            "nav": [(page, path_of(page)) for page in PAGES],
            "here": request.url.path,
            **context,
        },
        status_code=status_code,
        headers=_HEADERS,
    )
    return response


def _safe_next(value: str | None) -> str:
    """Where to go after login or a language switch: a console path, never another site."""
    if value and value.startswith("/console/") and "//" not in value and "\\" not in value:
        return value
    return "/console/"


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


@public.get("/")
def root() -> RedirectResponse:
    """``/`` leads to the console (its overview, or the login page first)."""
    return RedirectResponse("/console/", status_code=303)


@public.get(LOGIN)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    """The login form: the API token."""
    return _render(request, "login.html", session=None, next=_safe_next(next), error=None)


@public.post(LOGIN)
async def login(request: Request) -> Response:
    """Check the API token; on success open a session (the cookie) and go on."""
    form = await _form(request)
    settings: Settings = request.app.state.settings
    target = _safe_next(form.get("next"))
    if settings.api_token is None:
        return _render(
            request,
            "login.html",
            session=None,
            next=target,
            error="login.not_configured",
            status_code=401,
        )
    if not token_matches(settings, form.get("token", "")):
        _log.warning("console.login_refused", peer=request.client.host if request.client else "")
        return _render(
            request, "login.html", session=None, next=target, error="login.wrong", status_code=401
        )
    _, cookie = open_session(settings)
    _log.info("console.login", peer=request.client.host if request.client else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@public.get("/console/lang/{language}")
def switch_language(language: str, next: str | None = None) -> RedirectResponse:
    """Remember the chosen language (a cookie for a year) and go back to the page."""
    response = RedirectResponse(_safe_next(next), status_code=303)
    if language in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, language, max_age=365 * 86400, path="/", samesite="strict")
    return response


@pages.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (with the page's CSRF token) and go to the login page."""
    session: Session = request.state.session
    form = await _form(request)
    if not session.csrf_matches(form.get("csrf")):
        return Response("missing or wrong CSRF token", status_code=403, media_type="text/plain")
    response = RedirectResponse(LOGIN, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _page(name: str) -> Any:
    def show(request: Request) -> HTMLResponse:
        return _render(request, f"{name.replace('-', '_')}.html", session=request.state.session)

    show.__name__ = f"page_{name.replace('-', '_')}"
    show.__doc__ = f"The {name} page."
    return show


for _name in PAGES:
    pages.add_api_route(
        path_of(_name).removeprefix("/console"),
        _page(_name),
        methods=["GET"],
        response_class=HTMLResponse,
    )


@pages.get("/messages/{envelope_id}", response_class=HTMLResponse)
def page_trace(request: Request, envelope_id: str) -> HTMLResponse:
    """One message's trace page (its figures come from ``/api/messages/{id}/trace``)."""
    return _render(
        request,
        "trace.html",
        session=request.state.session,
        envelope_id=envelope_id,
    )


def login_redirect(request: Request) -> RedirectResponse:
    """Where a request without a session goes: the login page, then back to the page asked for."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN}?next={quote(_safe_next(wanted), safe='')}", status_code=303)
