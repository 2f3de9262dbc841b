"""The ``auth:`` block of an outbound FHIR subscriber: OAuth2 client credentials, SMART Backend.

``client_credentials`` (RFC 6749 §4.4) authenticates with a client id and a secret (HTTP Basic,
§2.3.1). ``smart_backend`` is SMART App Launch's Backend Services profile: the client proves
itself with a JWT it signs with its private key (RS384 or ES384), whose public half the
authorisation server already holds (RFC 7523 client assertion). Either way the access token is
sent as ``Authorization: Bearer`` to the FHIR server (``broker.delivery.oauth``).

The secret is never written in a registration: it is read from an environment variable or from a
file outside the repository, when a token is fetched. Paths are resolved like those of ``tls:``
(against the registration file's directory).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from broker.yamlspec import beside_registration

__all__ = ["OAuthSpec", "load_signing_key"]

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_signing_key(path: Path) -> SigningKey:
    """The PEM private key of a SMART Backend client (RSA of 2048 bits or more, or EC P-384).

    Raises:
        ValueError: the file is not an unencrypted PEM private key of either kind.
    """
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        msg = f"{path} is not an unencrypted PEM private key ({exc})"
        raise ValueError(msg) from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return key
    msg = (
        f"{path} holds neither an RSA key of 2048 bits or more (RS384) nor an EC P-384 key (ES384)"
    )
    raise ValueError(msg)


class OAuthSpec(BaseModel):
    """How an outbound FHIR subscriber obtains its access token.

    Usage (OAuth2 client credentials, the secret in the service's environment)::

        auth:
          kind: client_credentials
          token_url: https://auth.dmp.sante.gov.ma/oauth2/token
          client_id: passerelle-chu-rabat
          client_secret_env: DMP_CLIENT_SECRET
          scope: system/*.write

    Usage (SMART Backend Services, a signed JWT assertion)::

        auth:
          kind: smart_backend
          token_url: https://auth.dmp.sante.gov.ma/oauth2/token
          client_id: passerelle-chu-rabat
          private_key: /etc/passerelle/dmp-client.key
          key_id: passerelle-2026-12
          scope: system/Patient.write system/Encounter.write system/Observation.write
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["client_credentials", "smart_backend"]
    token_url: str
    """The authorisation server's token endpoint (``https://``; ``http://`` only with the
    adapter's ``insecure_http: true``)."""
    client_id: str = Field(min_length=1)
    scope: str | None = Field(None, min_length=1)
    """Space-separated scopes asked for (SMART: ``system/Patient.write``...)."""
    client_secret_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """client_credentials: the environment variable holding the secret."""
    client_secret_file: Path | None = None
    """client_credentials: a file holding the secret (trailing whitespace ignored)."""
    private_key: Path | None = None
    """smart_backend: the PEM private key the assertion is signed with."""
    algorithm: Literal["RS384", "ES384"] | None = None
    """smart_backend: the JWS algorithm; by default the one the key's type gives."""
    key_id: str | None = Field(None, min_length=1)
    """smart_backend: the ``kid`` of the public key registered with the server (SMART requires
    it in the assertion's header)."""

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "client_secret" in data:
            msg = (
                "an inline client_secret is refused: name the environment variable that holds "
                "it (client_secret_env) or a file outside the repository (client_secret_file)"
            )
            raise ValueError(msg)
        return data

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            msg = f"expected an https:// token endpoint URL, got {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("client_secret_file", "private_key")
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        return beside_registration(value, info.context, must_exist=True)

    @model_validator(mode="after")
    def _kind_needs(self) -> OAuthSpec:
        secrets = [self.client_secret_env, self.client_secret_file]
        signing = [self.private_key, self.algorithm, self.key_id]
        if self.kind == "client_credentials":
            if any(v is not None for v in signing):
                raise ValueError("private_key, algorithm and key_id are for kind: smart_backend")
            if sum(v is not None for v in secrets) != 1:
                msg = (
                    "kind: client_credentials needs one of client_secret_env or client_secret_file"
                )
                raise ValueError(msg)
            if self.client_secret_env is not None and not os.environ.get(self.client_secret_env):
                msg = (
                    f"the environment variable {self.client_secret_env} (client_secret_env) is "
                    "not set; set it in the service's environment"
                )
                raise ValueError(msg)
            return self
        if any(v is not None for v in secrets):
            raise ValueError("client_secret_env and client_secret_file are for client_credentials")
        if self.private_key is None or self.key_id is None:
            raise ValueError("kind: smart_backend needs private_key and key_id (its 'kid')")
        key = load_signing_key(self.private_key)
        fits = "RS384" if isinstance(key, rsa.RSAPrivateKey) else "ES384"
        if self.algorithm not in (None, fits):
            msg = f"algorithm {self.algorithm} does not fit the key of {self.private_key} ({fits})"
            raise ValueError(msg)
        return self

    @property
    def signing_algorithm(self) -> str:
        """smart_backend: ``RS384`` or ``ES384``, from ``algorithm`` or the key's type."""
        if self.algorithm is not None:
            return self.algorithm
        assert self.private_key is not None
        key = load_signing_key(self.private_key)
        return "RS384" if isinstance(key, rsa.RSAPrivateKey) else "ES384"

    def secret(self) -> str:
        """client_credentials: the secret, read now from its variable or file.

        Raises:
            OSError: the file cannot be read (or the variable is no longer set).
        """
        if self.client_secret_file is not None:
            return self.client_secret_file.read_text(encoding="utf-8").strip()
        value = os.environ.get(self.client_secret_env or "")
        if not value:
            msg = f"the environment variable {self.client_secret_env} is not set"
            raise OSError(msg)
        return value
