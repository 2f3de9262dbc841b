"""Who may use the API and the console: the one place that checks credentials.

Today there is one credential, the API token (``Settings.api_token``): sent as a bearer token
to the API, or typed once into the console's login page, which then holds a session cookie.
The cookie is signed with a key derived from the token, so changing the token ends every
session. Issue 10 (users and roles) replaces this module; its callers ask only "who is this?"
(:func:`token_matches`, :func:`open_session`, :func:`read_session`).

A session carries its CSRF token: the console's pages embed it and send it back in the
``X-CSRF-Token`` header (or a ``csrf`` form field) with every POST; the cookie alone, which a
browser attaches by itself, never suffices for an action.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from broker.settings import Settings

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "Session",
    "open_session",
    "read_session",
    "token_matches",
]

SESSION_COOKIE = "passerelle_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 8 * 3600
"""A console session lasts a working shift; then the operator logs in again."""
_KEY_PURPOSE = b"passerelle console session v1"


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in console session.

    Attributes:
        who: who logged in (today always ``console``: the API token names no one).
        issued_at: epoch seconds of the login.
        csrf: the token every POST of this session must send back.
    """

    who: str
    issued_at: float
    csrf: str

    def csrf_matches(self, presented: str | None) -> bool:
        """Whether ``presented`` is this session's CSRF token (compared in constant time)."""
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8"), self.csrf.encode("utf-8")
        )


def _token(settings: Settings) -> bytes | None:
    if settings.api_token is None:
        return None
    value = settings.api_token.get_secret_value().encode("utf-8")
    return value or None


def token_matches(settings: Settings, presented: str) -> bool:
    """Whether ``presented`` is the configured API token; never true when none is configured."""
    expected = _token(settings)
    return expected is not None and hmac.compare_digest(presented.encode("utf-8"), expected)


def _key(token: bytes) -> bytes:
    return hmac.new(token, _KEY_PURPOSE, hashlib.sha256).digest()


def _sign(key: bytes, payload: bytes) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, payload, hashlib.sha256).digest()).decode()


def open_session(settings: Settings, *, now: float | None = None) -> tuple[Session, str]:
    """A new session and its cookie value; call only after :func:`token_matches`.

    Raises:
        ValueError: no API token is configured (nothing to sign with).
    """
    token = _token(settings)
    if token is None:
        msg = "no API token is configured: a console session cannot be signed"
        raise ValueError(msg)
    session = Session("console", time.time() if now is None else now, secrets.token_urlsafe(24))
    body = {"who": session.who, "iat": session.issued_at, "csrf": session.csrf}
    payload = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode())
    return session, f"{payload.decode()}.{_sign(_key(token), payload)}"


def read_session(
    settings: Settings, cookie: str | None, *, now: float | None = None
) -> Session | None:
    """The session a cookie value stands for, or ``None``: absent, forged, expired or signed
    with a token that is no longer the configured one."""
    token = _token(settings)
    if token is None or not cookie or "." not in cookie:
        return None
    payload, _, signature = cookie.rpartition(".")
    if not hmac.compare_digest(signature.encode(), _sign(_key(token), payload.encode()).encode()):
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(payload.encode()))
        session = Session(str(body["who"]), float(body["iat"]), str(body["csrf"]))
    except (ValueError, KeyError, TypeError):
        return None
    age = (time.time() if now is None else now) - session.issued_at
    return session if 0 <= age < SESSION_TTL_S else None
