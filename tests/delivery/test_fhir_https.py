"""Outbound FHIR over HTTPS: CA bundle, mutual TLS, server name, OAuth2 and SMART Backend tokens.

Real loopback HTTPS peers (tests/delivery/peers_https.py) with the test CA: a FHIR server that
wants a bearer token the token endpoint issued, and the token endpoint itself.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from broker.adapters.spec import AdapterSpec
from broker.delivery.oauth import ASSERTION_LIFETIME_S, TokenSource
from broker.delivery.send import FhirRestSender
from broker.envelope import Envelope
from broker.errors import RetryableDeliveryError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse
from tests.delivery.peers_https import FhirPeer, TokenPeer, https_server
from tests.tlsca import Pki

ROOT = Path(__file__).resolve().parents[2]
SECRET_ENV = "PASSERELLE_TEST_DMP_SECRET"


@pytest.fixture(name="envelope", scope="module")
def fixture_envelope() -> Envelope:
    mappings = MappingSet.load(ROOT / "mappings")
    raw = (ROOT / "tests/samples/hl7v2/adt_a01_v251.hl7").read_bytes()
    now = datetime(2024, 1, 1, tzinfo=UTC)
    result = mappings.map_hl7v2(
        parse(decode(raw)), MapContext("env-1", "chu-rabat-adt", received_at=now)
    )
    return Envelope(
        id="env-1",
        source="chu-rabat-adt",
        content_type="application/hl7-v2",
        received_at=now,
        bundle=result.bundle,
    )


def sender(url: str, **options: Any) -> FhirRestSender:
    adapter = AdapterSpec.model_validate(
        {
            "id": "dmp-national",
            "name": "DMP",
            "direction": "outbound",
            "transport": "fhir-rest",
            "url": url,
            "subscribe": {"events": ["ADT^*"]},
            **options,
        }
    )
    return FhirRestSender(adapter, timeout=10)


def client_credentials(token_url: str, **more: Any) -> dict[str, Any]:
    return {
        "kind": "client_credentials",
        "token_url": token_url,
        "client_id": "passerelle-chu-rabat",
        "client_secret_env": SECRET_ENV,
        "scope": "system/*.write",
        **more,
    }


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestTls:
    def test_the_ca_bundle_verifies_the_server(self, tls_pki: Pki, envelope):
        """With tls.ca the test CA, the POST is delivered over HTTPS."""
        fhir = FhirPeer()
        with https_server(fhir, tls_pki) as url:
            out = sender(url, tls={"ca": tls_pki.ca})
            try:
                assert out.send(envelope) == "HTTP 200"
            finally:
                out.close()
        assert len(fhir.requests) == 1

    def test_a_server_of_an_unknown_ca_is_retried_with_the_reason(self, tls_pki: Pki, envelope):
        """Without tls.ca (the system's CAs) the test CA's server fails the handshake: retryable,
        the reason says the certificate did not verify, and nothing reached the server."""
        fhir = FhirPeer()
        with https_server(fhir, tls_pki) as url:
            out = sender(url)
            with pytest.raises(RetryableDeliveryError) as info:
                out.send(envelope)
        assert "TLS handshake with" in str(info.value)
        assert "certificate verify failed" in str(info.value)
        assert fhir.requests == []

    def test_the_server_name_is_checked(self, tls_pki: Pki, envelope):
        """tls.server_name: 'localhost' (in the certificate) passes at 127.0.0.1; another name
        is a handshake failure naming the mismatch."""
        fhir = FhirPeer()
        with https_server(fhir, tls_pki) as url:
            good = sender(url, tls={"ca": tls_pki.ca, "server_name": "localhost"})
            assert good.send(envelope) == "HTTP 200"
            good.close()
            bad = sender(url, tls={"ca": tls_pki.ca, "server_name": "dmp.sante.ma"})
            with pytest.raises(RetryableDeliveryError, match="certificate verify failed"):
                bad.send(envelope)
        assert len(fhir.requests) == 1

    def test_mutual_tls_presents_the_client_certificate(self, tls_pki: Pki, envelope):
        """A server that requires a client certificate sees the one of tls.cert; without one the
        delivery is retried with a TLS reason."""
        fhir = FhirPeer()
        with https_server(fhir, tls_pki, client_cert=True) as url:
            key = tls_pki.key(tls_pki.client_cert)
            out = sender(url, tls={"ca": tls_pki.ca, "cert": tls_pki.client_cert, "key": key})
            assert out.send(envelope) == "HTTP 200"
            out.close()
            anonymous = sender(url, tls={"ca": tls_pki.ca})
            with pytest.raises(RetryableDeliveryError) as info:
                anonymous.send(envelope)
        assert fhir.requests == [{"authorization": None, "client": "chu-rabat-his"}]
        assert "TLS handshake with" in str(info.value)


class TestClientCredentials:
    def test_one_token_serves_many_messages(self, tls_pki: Pki, envelope, monkeypatch):
        """Three deliveries, one token request (Basic client id:secret, the scope); each POST
        carries the bearer; neither the secret nor the token is logged."""
        monkeypatch.setenv(SECRET_ENV, "s3cr3t-not-in-logs")
        tokens = TokenPeer()
        fhir = FhirPeer(tokens=tokens)
        with (
            https_server(tokens, tls_pki, path="/oauth2/token") as token_url,
            https_server(fhir, tls_pki) as url,
            capture_logs() as logs,
        ):
            out = sender(url, tls={"ca": tls_pki.ca}, auth=client_credentials(token_url))
            assert [out.send(envelope) for _ in range(3)] == ["HTTP 200"] * 3
        assert len(tokens.requests) == 1
        assert tokens.requests[0]["form"] == {
            "grant_type": "client_credentials",
            "scope": "system/*.write",
        }
        assert [r["authorization"] for r in fhir.requests] == [f"Bearer {tokens.issued[0]}"] * 3
        text = repr(logs)
        assert "s3cr3t" not in text
        assert tokens.issued[0] not in text

    def test_a_401_fetches_a_fresh_token_once_and_resends(self, tls_pki, envelope, monkeypatch):
        """The server revokes the cached token: the sender fetches another and the message is
        delivered with it."""
        monkeypatch.setenv(SECRET_ENV, "s3cr3t-not-in-logs")
        tokens = TokenPeer()
        fhir = FhirPeer(tokens=tokens)
        with (
            https_server(tokens, tls_pki, path="/token") as token_url,
            https_server(fhir, tls_pki) as url,
        ):
            out = sender(url, tls={"ca": tls_pki.ca}, auth=client_credentials(token_url))
            out.send(envelope)
            fhir.revoked.add(tokens.issued[0])
            assert out.send(envelope) == "HTTP 200"
        assert len(tokens.issued) == 2
        assert [r["authorization"] for r in fhir.requests] == [
            f"Bearer {tokens.issued[0]}",
            f"Bearer {tokens.issued[0]}",
            f"Bearer {tokens.issued[1]}",
        ]

    def test_a_refused_client_is_retried_with_the_oauth_error(self, tls_pki, envelope, monkeypatch):
        """A wrong secret: retryable, the reason names the endpoint and 'invalid_client', never
        the secret; nothing is posted to the FHIR server."""
        monkeypatch.setenv(SECRET_ENV, "wrong-secret-value")
        tokens = TokenPeer()
        fhir = FhirPeer(tokens=tokens)
        with (
            https_server(tokens, tls_pki, path="/token") as token_url,
            https_server(fhir, tls_pki) as url,
        ):
            out = sender(url, tls={"ca": tls_pki.ca}, auth=client_credentials(token_url))
            with pytest.raises(RetryableDeliveryError) as info:
                out.send(envelope)
        reason = str(info.value)
        assert f"the token endpoint {token_url} refused" in reason
        assert "HTTP 401 (invalid_client)" in reason
        assert "wrong-secret" not in reason
        assert fhir.requests == []

    def test_an_unreachable_token_endpoint_is_retryable(self, tls_pki, envelope, monkeypatch):
        """Nothing listens at the token endpoint: retryable, 'cannot reach the token endpoint'."""
        monkeypatch.setenv(SECRET_ENV, "x")
        fhir = FhirPeer()
        with https_server(fhir, tls_pki) as url:
            token_url = f"https://127.0.0.1:{closed_port()}/token"
            out = sender(url, tls={"ca": tls_pki.ca}, auth=client_credentials(token_url))
            with pytest.raises(RetryableDeliveryError, match="cannot reach the token endpoint"):
                out.send(envelope)
        assert fhir.requests == []

    def test_the_secret_can_come_from_a_file(self, tls_pki, envelope, tmp_path):
        """client_secret_file: the file's content (trailing newline dropped) is the secret."""
        (tmp_path / "secret").write_text("s3cr3t-not-in-logs\n", encoding="utf-8")
        tokens = TokenPeer()
        fhir = FhirPeer(tokens=tokens)
        with (
            https_server(tokens, tls_pki, path="/token") as token_url,
            https_server(fhir, tls_pki) as url,
        ):
            auth = client_credentials(token_url, client_secret_file=str(tmp_path / "secret"))
            del auth["client_secret_env"]
            assert sender(url, tls={"ca": tls_pki.ca}, auth=auth).send(envelope) == "HTTP 200"


class TestRefresh:
    def test_a_token_is_replaced_before_it_expires(self, tls_pki, monkeypatch):
        """expires_in 300: reused at +200 s, replaced at +250 s (within the 60 s margin)."""
        monkeypatch.setenv(SECRET_ENV, "s3cr3t-not-in-logs")
        now = [1000.0]
        tokens = TokenPeer(expires_in=300)
        with https_server(tokens, tls_pki, path="/token") as token_url:
            spec = AdapterSpec.model_validate(
                {
                    "id": "dmp-national",
                    "name": "DMP",
                    "direction": "outbound",
                    "transport": "fhir-rest",
                    "url": "https://127.0.0.1/fhir",
                    "tls": {"ca": tls_pki.ca},
                    "auth": client_credentials(token_url),
                    "subscribe": {"events": ["ADT^*"]},
                }
            )
            assert spec.tls is not None
            assert spec.auth is not None
            source = TokenSource(
                "dmp-national",
                spec.auth,
                context=spec.tls.client_context(),
                timeout=10,
                clock=lambda: now[0],
            )
            first = source.authorization()
            now[0] += 200
            assert source.authorization() == first
            now[0] += 50
            second = source.authorization()
        assert second != first
        assert len(tokens.requests) == 2


def _key_pair(kind: str, directory: Path) -> tuple[Path, Any]:
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    path = directory / f"smart-{kind}.key"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, private.public_key()


class TestSmartBackend:
    @pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
    def test_the_assertion_follows_the_smart_profile(self, algorithm, tls_pki, envelope, tmp_path):
        """The token endpoint verifies the assertion's signature with cryptography; its header
        has alg, kid, typ JWT; iss = sub = client id, aud = token endpoint, exp at most 5 minutes
        ahead, a jti never repeated; the FHIR server gets the bearer."""
        key_path, public = _key_pair(algorithm, tmp_path)
        tokens = TokenPeer(public_key=public, expires_in=300)
        fhir = FhirPeer(tokens=tokens)
        with (
            https_server(tokens, tls_pki, path="/auth/token") as token_url,
            https_server(fhir, tls_pki) as url,
        ):
            auth = {
                "kind": "smart_backend",
                "token_url": token_url,
                "client_id": "passerelle-chu-rabat",
                "private_key": str(key_path),
                "key_id": "passerelle-2026-12",
                "scope": "system/Patient.write system/Observation.write",
            }
            out = sender(url, tls={"ca": tls_pki.ca}, auth=auth)
            assert out.send(envelope) == "HTTP 200"
            assert out.tokens is not None
            out.tokens.invalidate()
            assert out.send(envelope) == "HTTP 200"
        assert len(tokens.issued) == 2
        first, second = tokens.requests
        assert first["header"] == {"alg": algorithm, "kid": "passerelle-2026-12", "typ": "JWT"}
        claims = first["claims"]
        assert claims["iss"] == claims["sub"] == "passerelle-chu-rabat"
        assert claims["aud"] == token_url
        assert 0 < claims["exp"] - claims["iat"] <= 300
        assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME_S
        assert claims["jti"] != second["claims"]["jti"]
        assert first["form"]["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        assert first["form"]["scope"] == "system/Patient.write system/Observation.write"
        assert first["authorization"] is None
        assert fhir.requests[-1]["authorization"] == f"Bearer {tokens.issued[1]}"

    def test_a_key_the_server_does_not_know_is_refused(self, tls_pki, envelope, tmp_path):
        """Signed with another key than the one registered: invalid_client, retryable."""
        key_path, _ = _key_pair("ES384", tmp_path)
        _, other = _key_pair("RS384", tmp_path / "..")
        tokens = TokenPeer(public_key=other)
        with https_server(tokens, tls_pki, path="/token") as token_url:
            auth = {
                "kind": "smart_backend",
                "token_url": token_url,
                "client_id": "passerelle-chu-rabat",
                "private_key": str(key_path),
                "key_id": "k1",
            }
            out = sender("https://127.0.0.1:9/fhir", tls={"ca": tls_pki.ca}, auth=auth)
            with pytest.raises(RetryableDeliveryError, match="invalid_client"):
                out.send(envelope)
