"""HTTPS for the API and the console: the certificate and key of the settings, checked once.

With ``PASSERELLE_API_TLS_CERT`` and ``PASSERELLE_API_TLS_KEY`` set, ``passerelle api`` (and so
``serve``) has uvicorn serve TLS only (1.2 at least, Python's ``ssl`` defaults), and the console
marks its session cookie ``Secure``. The files are checked before the server starts: a missing
or unreadable file, a key protected by a passphrase (a service cannot type one) or a key that is
not the certificate's stops it with one line naming the file.
"""

from __future__ import annotations

import ssl
from typing import Any

from broker.errors import ConfigurationError
from broker.settings import Settings

__all__ = ["CIPHERS", "server_tls"]

CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"
"""TLS 1.2 cipher suites offered (forward secrecy, AEAD only); TLS 1.3 uses its own. uvicorn's
default ("TLSv1") would offer CBC and SHA-1 suites too."""


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the service's terminal.
    return b""


def server_tls(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options for the settings (none without a certificate), once checked.

    Raises:
        ConfigurationError: the certificate or key cannot be used; the message names the file.
    """
    cert, key = settings.api_tls_cert, settings.api_tls_key
    if cert is None or key is None:
        return {}
    for name, path in (("PASSERELLE_API_TLS_CERT", cert), ("PASSERELLE_API_TLS_KEY", key)):
        if not path.is_file():
            msg = f"{name}: {path} is not a readable file (expected PEM)"
            raise ConfigurationError(msg)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError) as exc:
        msg = (
            f"PASSERELLE_API_TLS_CERT/_KEY: {cert} and {key} cannot be used together "
            f"({getattr(exc, 'reason', None) or exc.__class__.__name__}): a PEM certificate "
            "and its unencrypted key are expected"
        )
        raise ConfigurationError(msg) from exc
    return {
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        "ssl_ciphers": CIPHERS,
    }
