"""A throw-away certificate authority for the TLS tests, made at test time (no key is committed).

``make_pki(directory)`` writes a CA, a server certificate for 127.0.0.1 and localhost and a
client certificate, both signed by the CA, and a second, "rogue" CA with its own client
certificate: what a peer the listener must not trust would present. Keys are P-256 (fast to
make), each beside its certificate as ``NAME.pem`` and ``NAME.key``.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """The files of a test PKI; each ``*_cert`` has its key at the same path with ``.key``."""

    directory: Path
    ca: Path
    server_cert: Path
    client_cert: Path
    rogue_ca: Path
    rogue_client_cert: Path

    @staticmethod
    def key(cert: Path) -> Path:
        """The private key written beside ``cert``."""
        return cert.with_suffix(".key")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Passerelle tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Path:
    path = directory / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _issue(
    subject: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    names: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def make_pki(directory: Path) -> Pki:
    """Write a test CA, its server and client certificates, and a rogue CA with its client."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _issue("Passerelle test CA", None)
    server = _issue(
        "localhost",
        ca,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client = _issue("chu-rabat-his", ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_ca = _issue("Rogue CA", None)
    rogue_client = _issue("chu-rabat-his", rogue_ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        directory=directory,
        ca=_write(directory, "ca", *ca),
        server_cert=_write(directory, "server", *server),
        client_cert=_write(directory, "client", *client),
        rogue_ca=_write(directory, "rogue-ca", *rogue_ca),
        rogue_client_cert=_write(directory, "rogue-client", *rogue_client),
    )
