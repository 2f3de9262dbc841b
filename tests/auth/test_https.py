"""HTTPS for the API and the console: a real uvicorn server with a test CA's certificate and a
real HTTPS client (httpx) that trusts that CA only."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from broker import running
from broker.api import create_app
from broker.api.https import server_tls
from broker.cli.summary import startup_summary
from broker.errors import ConfigurationError
from broker.settings import Settings
from broker.testing import free_port, wait_until
from tests.tlsca import Pki

TOKEN = "synthetic-bootstrap-token-over-tls"


def _settings(pki: Pki, redis_url: str, tmp_path: Path, **more: object) -> Settings:
    return Settings(
        redis_url=redis_url,
        api_token=SecretStr(TOKEN),
        api_tls_cert=pki.server_cert,
        api_tls_key=Pki.key(pki.server_cert),
        data_dir=tmp_path / "var",
        **more,
    )


@pytest.fixture(name="https_url")
def fixture_https_url(tls_pki: Pki, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """The API served by uvicorn over TLS (as ``passerelle api`` runs it) on a loopback port."""
    port = free_port()
    settings = _settings(tls_pki, redis_url, tmp_path, http_port=port)
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **server_tls(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="https-api", daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=30), "uvicorn did not start"
    yield running.api_url(settings)
    server.should_exit = True
    thread.join(timeout=30)


def _trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def test_the_api_answers_over_https_to_a_client_that_trusts_the_ca(
    https_url: str, tls_pki: Pki, redis_client
) -> None:
    assert https_url.startswith("https://127.0.0.1:")
    with httpx.Client(base_url=https_url, verify=_trusting(tls_pki)) as client:
        health = client.get("/healthz")
        assert health.json() == {"status": "ok"}
        tls = health.extensions["network_stream"].get_extra_info("ssl_object")
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        queues = client.get("/api/queues", headers={"Authorization": f"Bearer {TOKEN}"})
        assert queues.status_code == 200
        assert client.get("/api/queues").status_code == 401


def test_the_console_session_cookie_is_secure_over_https(
    https_url: str, tls_pki: Pki, redis_client
) -> None:
    with httpx.Client(base_url=https_url, verify=_trusting(tls_pki)) as client:
        reply = client.post("/console/login", data={"token": TOKEN})
    assert reply.status_code == 303
    cookie = reply.headers["set-cookie"]
    assert cookie.startswith("passerelle_session=")
    assert "Secure" in cookie
    assert "HttpOnly" in cookie


def test_a_client_that_does_not_trust_the_ca_is_refused(https_url: str, tls_pki: Pki) -> None:
    with (
        httpx.Client(
            base_url=https_url, verify=ssl.create_default_context(cafile=str(tls_pki.rogue_ca))
        ) as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get("/healthz")


def test_plain_http_gets_no_answer_from_the_tls_port(https_url: str) -> None:
    plain = https_url.replace("https://", "http://")
    with httpx.Client(base_url=plain) as client:
        try:
            reply = client.get("/healthz")
        except httpx.HTTPError:
            return  # the TLS server closed the connection: nothing served in clear
        assert reply.status_code == 400  # uvicorn's answer to an invalid TLS record


def test_tls_settings_go_together_and_are_checked_before_start(
    tls_pki: Pki, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="set both or neither"):
        Settings(api_tls_cert=tls_pki.server_cert)
    missing = Settings(api_tls_cert=tmp_path / "none.pem", api_tls_key=tmp_path / "none.key")
    with pytest.raises(ConfigurationError, match=r"PASSERELLE_API_TLS_CERT: .*none\.pem"):
        server_tls(missing)
    mismatched = Settings(
        api_tls_cert=tls_pki.server_cert, api_tls_key=Pki.key(tls_pki.client_cert)
    )
    with pytest.raises(ConfigurationError, match="cannot be used together"):
        server_tls(mismatched)
    assert server_tls(Settings()) == {}


def test_serves_summary_shows_https(tls_pki: Pki, redis_url: str, tmp_path: Path) -> None:
    settings = _settings(tls_pki, redis_url, tmp_path)
    url = running.api_url(settings)
    assert url == "https://127.0.0.1:8000"
    summary = startup_summary(settings, [], api_url=url, token_file=None, runtime_file=None)
    assert "console and API  https://127.0.0.1:8000" in summary
    assert running.api_url(Settings()) == "http://127.0.0.1:8000"
