"""The console's routes: the login page, the language switch and the pages.

``public`` holds what a browser reaches before logging in (the login form, the language switch,
``/`` which leads to the console); ``pages`` holds every page, each declaring the permission it
needs (:data:`PAGE_PERMISSIONS`, ``broker.guard.require_page``: no session sends the browser to
the login page, a role without the permission gets a 403 page). A page shows only the links and
buttons its role may use; the API refuses the rest anyway. Pages are HTML shells: their figures
come from the JSON API, which the pages' scripts fetch with the session cookie and, for actions,
the session's CSRF token. No route here is in the OpenAPI schema: they are pages, not the API.

A person logs in with a name and password; systems and the bootstrap admin with a token (any
role's), on the same page. Failed password logins are counted per name and per client address
and lock them out for a while (``broker.throttle``); the session names who, the role and the
credential (a token's id or the password's). Logins, refused logins, lockouts and logouts are
recorded (``broker.access_events``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jinja2
import redis
from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from broker import access_events, guard
from broker.access import (
    CSRF_HEADER,
    PASSWORD_CREDENTIAL,
    SESSION_COOKIE,
    SESSION_TTL_S,
    CredentialRefused,
    Principal,
    Session,
    open_session,
)
from broker.console import i18n
from broker.errors import ServiceUnavailable
from broker.settings import Settings
from broker.throttle import LoginThrottle

__all__ = [
    "LOGIN",
    "PAGES",
    "PAGE_PERMISSIONS",
    "STATIC",
    "forbidden_page",
    "login_redirect",
    "pages",
    "path_of",
    "public",
]

LOGIN = "/console/login"
STATIC = Path(__file__).parent / "static"
PAGES = ("overview", "messages", "dead-letters", "refusals", "unmapped")
"""The pages, in the order of the navigation bar; ``overview`` is ``/console/``."""
PAGE_PERMISSIONS = {
    "overview": "overview.read",
    "messages": "messages.read",
    "dead-letters": "messages.read",
    "refusals": "messages.read",
    "unmapped": "config.read",
}
"""The permission each page needs (a message's trace page: ``messages.read``)."""

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

public = APIRouter(include_in_schema=False, dependencies=[Depends(guard.public)])
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
    principal: Principal | None = getattr(request.state, "principal", None) if session else None
    held = principal.permissions if principal is not None else frozenset()
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
            "nav": [(page, path_of(page)) for page in PAGES if PAGE_PERMISSIONS[page] in held],
            "may": held.__contains__,
            "permissions": " ".join(sorted(held)),
            "who": session.who if session else "",
            "role": principal.role if principal is not None else "",
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
    """The login forms: name and password, or a token."""
    return _render(request, "login.html", session=None, next=_safe_next(next), error=None, user="")


@dataclass(frozen=True, slots=True)
class _Refused:
    """A login refused: the message to show (a catalogue key) and the status."""

    error: str
    status: int


def _throttle(request: Request) -> LoginThrottle:
    client: redis.Redis = request.app.state.redis
    return LoginThrottle(client)


def _token_login(request: Request, token: str, peer: str) -> Principal | _Refused:
    """The principal of a token login, or why it is refused."""
    try:
        return guard.authenticator(request).bearer(token)
    except CredentialRefused as exc:
        access_events.record("login_failed", "unknown", peer=peer, reason=str(exc), method="token")
        return _Refused(error="login.wrong", status=401)
    except ServiceUnavailable:
        return _Refused(error="login.unavailable", status=503)


def _password_login(request: Request, name: str, password: str, peer: str) -> Principal | _Refused:
    """The principal of a name and password, or why it is refused.

    A locked-out name or address is refused before the password is checked; each refusal
    counts towards a lockout. The name typed is recorded only when it is a user's (it might be
    a password typed in the wrong field).
    """
    throttle = _throttle(request)
    try:
        lockout = throttle.locked(name, peer)
        if lockout is not None:
            reason = f"{lockout.scope} locked out for another {lockout.seconds:.0f} s"
            access_events.record(
                "login_failed", "unknown", peer=peer, reason=reason, method="password"
            )
            return _Refused(error="login.locked", status=429)
        try:
            principal = guard.authenticator(request).password(name, password)
        except CredentialRefused as exc:
            user = None if str(exc) == "unknown user" else name
            access_events.record(
                "login_failed", "unknown", user=user, peer=peer, reason=str(exc), method="password"
            )
            for started in throttle.failed(name, peer):
                access_events.record(
                    "login_locked",
                    "unknown",
                    user=user if started.scope == "user" else None,
                    peer=peer,
                    reason=(
                        f"{started.failures} failed logins: {started.scope} locked out "
                        f"for {started.seconds:.0f} s"
                    ),
                )
            return _Refused(error="login.wrong_password", status=401)
        throttle.succeeded(name)
    except ServiceUnavailable:
        return _Refused(error="login.password_unavailable", status=503)
    return principal


@public.post(LOGIN)
async def login(request: Request) -> Response:
    """Check the name and password, or the token (any role's); on success open a session (the
    cookie) and go on."""
    form = await _form(request)
    settings: Settings = request.app.state.settings
    target = _safe_next(form.get("next"))
    peer = request.client.host if request.client else ""
    if settings.api_token is None:
        return _render(
            request,
            "login.html",
            session=None,
            next=target,
            error="login.not_configured",
            status_code=401,
            user=form.get("user", ""),
        )
    by_password = "token" not in form
    if by_password:
        outcome = await run_in_threadpool(
            _password_login, request, form.get("user", ""), form.get("password", ""), peer
        )
    else:
        outcome = await run_in_threadpool(_token_login, request, form["token"], peer)
    if isinstance(outcome, _Refused):
        return _render(
            request,
            "login.html",
            session=None,
            next=target,
            error=outcome.error,
            status_code=outcome.status,
            user=form.get("user", ""),
        )
    principal = outcome
    _, cookie = open_session(settings, principal)
    access_events.record(
        "login",
        principal.who,
        user=principal.who,
        token_id=None if by_password else principal.credential,
        role=principal.role,
        peer=peer,
        method="password" if by_password else "token",
    )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        # Over HTTPS (served by Passerelle, or by a proxy in front) the cookie never travels
        # in clear.
        secure=request.url.scheme == "https" or settings.api_tls_cert is not None,
    )
    return response


@public.get("/console/lang/{language}")
def switch_language(language: str, next: str | None = None) -> RedirectResponse:
    """Remember the chosen language (a cookie for a year) and go back to the page."""
    response = RedirectResponse(_safe_next(next), status_code=303)
    if language in i18n.LANGUAGES:
        response.set_cookie(i18n.COOKIE, language, max_age=365 * 86400, path="/", samesite="strict")
    return response


@pages.post("/logout", dependencies=[Depends(guard.require_page(None))])
async def logout(request: Request) -> Response:
    """End the session (with the page's CSRF token) and go to the login page."""
    session: Session = request.state.session
    form = await _form(request)
    if not session.csrf_matches(form.get("csrf")):
        return Response("missing or wrong CSRF token", status_code=403, media_type="text/plain")
    by_password = session.credential.startswith(PASSWORD_CREDENTIAL)
    access_events.record(
        "logout",
        session.who,
        token_id=None if by_password else session.credential,
        method="password" if by_password else "token",
    )
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
        dependencies=[Depends(guard.require_page(PAGE_PERMISSIONS[_name]))],
    )


@pages.get(
    "/messages/{envelope_id}",
    response_class=HTMLResponse,
    dependencies=[Depends(guard.require_page("messages.read"))],
)
def page_trace(request: Request, envelope_id: str) -> HTMLResponse:
    """One message's trace page (its figures come from ``/api/messages/{id}/trace``)."""
    return _render(
        request,
        "trace.html",
        session=request.state.session,
        envelope_id=envelope_id,
    )


def forbidden_page(request: Request, permission: str) -> HTMLResponse:
    """The 403 page of a session whose role lacks ``permission`` (named on the page)."""
    session: Session | None = getattr(request.state, "session", None)
    return _render(
        request, "forbidden.html", session=session, permission=permission, status_code=403
    )


def login_redirect(request: Request) -> RedirectResponse:
    """Where a request without a session goes: the login page, then back to the page asked for."""
    wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN}?next={quote(_safe_next(wanted), safe='')}", status_code=303)
