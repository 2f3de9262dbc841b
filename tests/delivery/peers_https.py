"""Loopback HTTPS peers for the outbound FHIR tests: a FHIR server that wants a bearer token and a
token endpoint that checks client credentials or a SMART client assertion.

Both are ``http.server`` servers behind an ``ssl`` context made from the test CA
(tests/tlsca.py). The token endpoint verifies a JWT assertion with ``cryptography`` itself (the
oracle is not PyJWT, which signs it).
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from tests.tlsca import Pki

__all__ = ["FhirPeer", "TokenPeer", "https_server", "verify_jws"]


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify_jws(token: str, public_key: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a compact JWS's RS384/ES384 signature with ``cryptography``; return header, claims.

    Raises:
        cryptography.exceptions.InvalidSignature: the signature does not verify.
    """
    head, body, signature = token.split(".")
    header = json.loads(_b64(head))
    signed = f"{head}.{body}".encode()
    raw = _b64(signature)
    if header["alg"] == "RS384":
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(raw, signed, padding.PKCS1v15(), hashes.SHA384())
    elif header["alg"] == "ES384":
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert len(raw) == 96
        der = encode_dss_signature(int.from_bytes(raw[:48]), int.from_bytes(raw[48:]))
        public_key.verify(der, signed, ec.ECDSA(hashes.SHA384()))
    else:
        raise AssertionError(f"unexpected alg {header['alg']}")
    return header, json.loads(_b64(body))


@dataclass
class TokenPeer:
    """What the token endpoint accepts and what it saw."""

    client_id: str = "passerelle-chu-rabat"
    secret: str = "s3cr3t-not-in-logs"
    public_key: Any = None
    """SMART: the client's registered public key; None: client credentials (Basic)."""
    expires_in: int = 300
    refuse: tuple[int, str] | None = None
    """Answer this (status, OAuth error) instead of a token."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    url: str = ""

    def answer(self, headers: Any, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        record: dict[str, Any] = {"form": form, "authorization": headers.get("Authorization")}
        self.requests.append(record)
        if self.refuse is not None:
            return self.refuse[0], {"error": self.refuse[1]}
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if self.public_key is None:
            expected = base64.b64encode(f"{self.client_id}:{self.secret}".encode()).decode()
            if headers.get("Authorization") != f"Basic {expected}":
                return 401, {"error": "invalid_client"}
        else:
            try:
                header, claims = verify_jws(form["client_assertion"], self.public_key)
            except Exception:
                return 401, {"error": "invalid_client"}
            record["header"], record["claims"] = header, claims
        token = f"tok-{len(self.issued) + 1}-{self.client_id}"
        self.issued.append(token)
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}


@dataclass
class FhirPeer:
    """The FHIR server: the bearer tokens it accepts and the requests it saw."""

    tokens: TokenPeer | None = None
    revoked: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def answer(
        self, headers: Any, client: str | None, path: str = ""
    ) -> tuple[int, dict[str, Any]]:
        authorization = headers.get("Authorization")
        self.requests.append({"authorization": authorization, "client": client})
        if self.tokens is not None:
            token = (authorization or "").removeprefix("Bearer ")
            if token not in self.tokens.issued or token in self.revoked:
                return 401, {"resourceType": "OperationOutcome", "issue": []}
        if path.endswith("/metadata"):
            software = {"name": "DMP national", "version": "3.1"}
            return 200, {
                "resourceType": "CapabilityStatement",
                "fhirVersion": "4.0.1",
                "software": software,
            }
        return 200, {"resourceType": "Bundle", "type": "transaction-response", "entry": []}


def _handler(peer: TokenPeer | FhirPeer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if isinstance(peer, TokenPeer):
                form = dict(urllib.parse.parse_qsl(body.decode()))
                status, answer = peer.answer(self.headers, form)
            else:
                cert = (
                    self.connection.getpeercert()
                    if hasattr(self.connection, "getpeercert")
                    else None
                )
                subject = dict(pair[0] for pair in (cert or {}).get("subject", ()))
                status, answer = peer.answer(self.headers, subject.get("commonName"), self.path)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def https_server(
    peer: TokenPeer | FhirPeer, pki: Pki, *, client_cert: bool = False, path: str = "/fhir"
) -> Iterator[str]:
    """Serve ``peer`` over HTTPS on loopback (the test CA's server certificate); yield its URL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.key(pki.server_cert))
    if client_cert:
        context.load_verify_locations(cafile=pki.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    peer.url = f"https://127.0.0.1:{server.server_address[1]}{path}"
    try:
        yield peer.url
    finally:
        server.shutdown()
        server.server_close()
