"""MLLP over TLS: the ``tls:`` block of a registration and the ``ssl`` contexts built from it.

An inbound adapter presents ``cert``/``key`` and, with ``client_cert: required``, accepts only
peers whose certificate ``ca`` verifies (mutual TLS). An outbound adapter verifies the server's
certificate against ``ca`` (the system's trusted CAs without one) and the name ``server_name``
(the ``connect`` host without one), and presents ``cert``/``key`` when given. TLS 1.2 is the
oldest version either side speaks.

Paths are resolved against the directory of the registration file (the ``file`` of the
validation context, see ``broker.yamlspec.load_model``), else against the working directory.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from broker.yamlspec import beside_registration

__all__ = ["TlsSpec"]


def _no_password() -> bytes:
    # An encrypted key would otherwise make OpenSSL prompt on the terminal of a service.
    return b""


class TlsSpec(BaseModel):
    """The ``tls:`` block of an MLLP registration.

    Usage (an inbound adapter asking for mutual TLS)::

        tls:
          cert: /etc/passerelle/tls/listener.pem
          key: /etc/passerelle/tls/listener.key
          ca: /etc/passerelle/tls/chu-rabat-ca.pem
          client_cert: required
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert: Path | None = None
    """This side's certificate chain (PEM), leaf first."""
    key: Path | None = None
    """The private key of ``cert`` (PEM, unencrypted); omitted when ``cert`` holds it too."""
    ca: Path | None = None
    """The CA certificates (PEM bundle) that verify the peer's certificate."""
    client_cert: Literal["required", "optional", "none"] = "none"
    """Inbound: ``required`` refuses a peer without a certificate ``ca`` verifies (mutual TLS);
    ``optional`` verifies one when presented; ``none`` asks for none."""
    server_name: str | None = Field(None, min_length=1)
    """Outbound: the name (SNI, and the one the server's certificate must carry) when it is not
    the ``connect`` host."""

    @field_validator("cert", "key", "ca")
    @classmethod
    def _readable_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        return beside_registration(value, info.context, must_exist=True)

    @model_validator(mode="after")
    def _key_needs_cert(self) -> TlsSpec:
        if self.key is not None and self.cert is None:
            raise ValueError("tls 'key' needs the 'cert' it belongs to")
        if self.client_cert != "none" and self.ca is None:
            msg = f"client_cert: {self.client_cert} needs 'ca', the CAs that verify the peers"
            raise ValueError(msg)
        return self

    def server_context(self) -> ssl.SSLContext:
        """The context of an inbound listener.

        Raises:
            ssl.SSLError: a file is not PEM, or the key does not match the certificate.
        """
        if self.cert is None:
            raise ValueError("an inbound TLS listener needs 'cert' (and 'key')")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key, password=_no_password)
        if self.ca is not None:
            context.load_verify_locations(cafile=self.ca)
        context.verify_mode = {
            "required": ssl.CERT_REQUIRED,
            "optional": ssl.CERT_OPTIONAL,
            "none": ssl.CERT_NONE,
        }[self.client_cert]
        return context

    def client_context(self) -> ssl.SSLContext:
        """The context of an outbound connection: the server's certificate and name verified.

        Raises:
            ssl.SSLError: a file is not PEM, or the key does not match the certificate.
        """
        context = ssl.create_default_context(cafile=self.ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert is not None:
            context.load_cert_chain(self.cert, self.key, password=_no_password)
        return context

    def check(self, direction: str) -> None:
        """Build this side's context once, so a bad PEM file is refused at load.

        Raises:
            ValueError: naming what could not be loaded.
        """
        try:
            if direction == "inbound":
                self.server_context()
            else:
                self.client_context()
        except ssl.SSLError as exc:
            msg = (
                f"the tls files do not load ({exc.reason or exc}); expected PEM files, "
                "the key matching the certificate"
            )
            raise ValueError(msg) from None
