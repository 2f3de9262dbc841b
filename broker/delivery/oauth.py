"""Access tokens for an outbound FHIR subscriber: fetched once, cached, refreshed before expiry.

One :class:`TokenSource` per subscriber per worker process (it lives in the subscriber's
``FhirRestSender``), so a message costs no token request: the token is reused until it comes
within :data:`REFRESH_MARGIN_S` (or half its lifetime) of expiring, or the FHIR server answers
401 (then ``invalidate`` and one retry with a fresh token).

``client_credentials`` posts the client id and secret (HTTP Basic, RFC 6749 §2.3.1, §4.4.2).
``smart_backend`` posts a client assertion (SMART App Launch 2.x, Backend Services
"Authenticating to the token endpoint"; RFC 7523 §2.2): a JWT signed RS384 or ES384 with the
header ``alg``, ``kid``, ``typ: JWT`` and the claims ``iss`` = ``sub`` = client id,
``aud`` = token endpoint, ``exp`` at most five minutes ahead and a unique ``jti``.

A token endpoint that cannot be reached or refuses is a ``RetryableDeliveryError`` whose reason
names the endpoint and the OAuth ``error`` code: the messages wait while the credentials are
fixed, none is dead-lettered for it. The secret, the assertion and the token are never logged
nor put in a reason.
"""

from __future__ import annotations

import base64
import http.client
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import jwt
import pydantic_core

from broker.adapters.https import connection_for, tls_reason
from broker.adapters.oauth import OAuthSpec, load_signing_key
from broker.errors import RetryableDeliveryError

__all__ = ["ASSERTION_LIFETIME_S", "REFRESH_MARGIN_S", "TokenSource", "client_assertion"]

ASSERTION_LIFETIME_S = 240
"""How far ahead a client assertion's ``exp`` lies: SMART allows at most 5 minutes; a minute
less leaves room for a server clock a little behind ours."""

REFRESH_MARGIN_S = 60.0
"""A cached token is replaced this long before it expires (half its lifetime when shorter)."""

_DEFAULT_LIFETIME_S = 300.0
"""A token whose answer has no ``expires_in`` (RFC 6749 §5.1 makes it optional) is kept this long."""

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def client_assertion(spec: OAuthSpec, *, now: float | None = None, jti: str | None = None) -> str:
    """The signed JWT a SMART Backend client authenticates with (compact JWS).

    Args:
        spec: the ``auth:`` block (``kind: smart_backend``).
        now: epoch seconds (tests).
        jti: the token id (tests); a fresh 128-bit random value otherwise.
    """
    assert spec.private_key is not None
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": spec.client_id,
        "sub": spec.client_id,
        "aud": spec.token_url,
        "exp": issued + ASSERTION_LIFETIME_S,
        "iat": issued,
        "jti": jti or secrets.token_urlsafe(16),
    }
    key = load_signing_key(spec.private_key)
    headers = {"kid": spec.key_id, "typ": "JWT"}
    return jwt.encode(claims, key, algorithm=spec.signing_algorithm, headers=headers)


class TokenSource:
    """The cached bearer token of one subscriber.

    Args:
        subscriber: the adapter id (errors name it).
        spec: the ``auth:`` block.
        context: the TLS client context for an https token endpoint (the subscriber's ``tls:``
            CAs and client certificate), or None for the system's CAs.
        timeout: seconds to connect and to wait for the answer.
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        subscriber: str,
        spec: OAuthSpec,
        *,
        context: ssl.SSLContext | None,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subscriber = subscriber
        self.spec = spec
        self._context = context
        self._timeout = timeout
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self.fetched = 0
        """Tokens fetched so far (the cache's effect, for tests and the ping)."""

    def authorization(self) -> str:
        """The ``Authorization`` header value, from the cache or a fresh token.

        Raises:
            RetryableDeliveryError: the token endpoint cannot be reached or refuses.
        """
        if self._token is None or self._clock() >= self._refresh_at:
            self._fetch()
        assert self._token is not None
        return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Forget the cached token (the FHIR server answered 401 with it)."""
        self._token = None

    def _form(self) -> tuple[dict[str, str], dict[str, str]]:
        """The token request's form fields and extra headers."""
        form = {"grant_type": "client_credentials"}
        if self.spec.scope:
            form["scope"] = self.spec.scope
        headers: dict[str, str] = {}
        if self.spec.kind == "smart_backend":
            form["client_assertion_type"] = _ASSERTION_TYPE
            form["client_assertion"] = client_assertion(self.spec)
            return form, headers
        try:
            secret = self.spec.secret()
        except OSError as exc:
            msg = f"the client secret of {self.subscriber} cannot be read ({exc})"
            raise RetryableDeliveryError(msg, destination=self.subscriber) from None
        # RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
        pair = f"{_quote(self.spec.client_id)}:{_quote(secret)}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return form, headers

    def _fetch(self) -> None:
        url = self.spec.token_url
        form, headers = self._form()
        body = urllib.parse.urlencode(form).encode()
        headers |= {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "User-Agent": "passerelle",
        }
        conn = connection_for(url, timeout=self._timeout, context=self._context)
        started = self._clock()
        try:
            path = urllib.parse.urlsplit(url).path or "/"
            conn.request("POST", path, body, headers)
            response = conn.getresponse()
            status, reply = response.status, response.read()
        except TimeoutError:
            msg = f"no answer from the token endpoint {url} within {self._timeout} s"
            raise RetryableDeliveryError(msg, destination=self.subscriber) from None
        except ssl.SSLError as exc:
            msg = f"TLS handshake with the token endpoint {url} failed ({tls_reason(exc)})"
            raise RetryableDeliveryError(msg, destination=self.subscriber) from None
        except (OSError, http.client.HTTPException) as exc:
            msg = f"cannot reach the token endpoint {url} ({type(exc).__name__})"
            raise RetryableDeliveryError(msg, destination=self.subscriber) from None
        finally:
            conn.close()
        answer = _json(reply)
        if not 200 <= status < 300:
            error = answer.get("error") if isinstance(answer, dict) else None
            code = f" ({str(error)[:80]})" if error else ""
            msg = f"the token endpoint {url} refused the {self.spec.kind} request: HTTP {status}{code}"
            raise RetryableDeliveryError(msg, destination=self.subscriber)
        token = answer.get("access_token") if isinstance(answer, dict) else None
        kind = str(answer.get("token_type", "")) if isinstance(answer, dict) else ""
        if not isinstance(token, str) or not token or kind.lower() != "bearer":
            msg = f"the token endpoint {url} answered HTTP {status} without a bearer access_token"
            raise RetryableDeliveryError(msg, destination=self.subscriber)
        lifetime = _lifetime(answer.get("expires_in"))
        self._token = token
        self._refresh_at = started + lifetime - min(REFRESH_MARGIN_S, lifetime / 2)
        self.fetched += 1


def _quote(value: str) -> str:
    return urllib.parse.quote_plus(value)


def _lifetime(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return _DEFAULT_LIFETIME_S
    return seconds if seconds > 0 else _DEFAULT_LIFETIME_S


def _json(body: bytes) -> Any:
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        return None
