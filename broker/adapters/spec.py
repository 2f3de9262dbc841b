"""AdapterSpec: the schema of ``adapters/*.yaml`` registrations."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Collection
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from broker.adapters.oauth import OAuthSpec
from broker.adapters.tls import TlsSpec
from broker.errors import AdapterSpecError
from broker.identity import IdentifierSystem
from broker.mapping.spec import HL7_VERSIONS
from broker.parsing.hl7v2 import charset_code
from broker.policy.spec import PolicySpec
from broker.settings import RetryPolicy
from broker.yamlspec import load_model, read_yaml

__all__ = ["AdapterSpec", "OAuthSpec", "Sender", "Subscription", "TlsSpec", "load_adapters"]

_HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")


class Subscription(BaseModel):
    """What an outbound adapter receives: events by pattern (``ADT^*``), optionally by source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[str] = Field(min_length=1)
    sources: list[str] | None = None
    """Inbound adapter ids; ``None`` means every source."""

    def wants(self, event: str, source: str) -> bool:
        """Tell whether a message of ``event`` from ``source`` is subscribed to."""
        if self.sources is not None and source not in self.sources:
            return False
        return any(fnmatch.fnmatchcase(event, pattern) for pattern in self.events)


class Sender(BaseModel):
    """One sending system an inbound HL7 v2 adapter accepts, by MSH-3 and/or MSH-4.

    A value matches its field's namespace ID (HD.1, ``CHU-RABAT``) or universal ID (HD.2, an
    OID such as ``2.16.504.1.10``), compared exactly (HL7 v2.5.1 §2.14.9.3-4, data type HD).
    An omitted value matches anything.

    Usage (in ``adapters/chu-rabat-adt.yaml``)::

        senders:
          - {application: HIS, facility: CHU-RABAT}
          - facility: CHU-RABAT-MATERNITE
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    application: str | None = Field(None, min_length=1)
    """MSH-3, the sending application."""
    facility: str | None = Field(None, min_length=1)
    """MSH-4, the sending facility."""

    @model_validator(mode="after")
    def _names_someone(self) -> Sender:
        if self.application is None and self.facility is None:
            raise ValueError("a sender names its application (MSH-3), its facility (MSH-4) or both")
        return self

    def matches(self, application: tuple[str, str], facility: tuple[str, str]) -> bool:
        """Tell whether MSH-3 and MSH-4, each as (HD.1, HD.2), are this sender's."""
        return (self.application is None or self.application in application) and (
            self.facility is None or self.facility in facility
        )


class AdapterSpec(BaseModel):
    """One registered system: an inbound source or an outbound subscriber.

    Usage (``adapters/chu-rabat-adt.yaml``)::

        id: chu-rabat-adt
        name: CHU Rabat - ADT
        direction: inbound
        transport: mllp
        listen: 127.0.0.1:2575
        format: hl7v2
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str
    direction: Literal["inbound", "outbound"]
    transport: Literal["mllp", "fhir-rest", "http"]
    """``mllp`` (inbound or outbound), ``fhir-rest`` (outbound) or ``http`` (inbound: the
    sender posts to ``/inbound/{id}/hl7v2`` or ``/inbound/{id}/fhir`` of the API)."""
    format: Literal["hl7v2", "fhir"] = "hl7v2"
    enabled: bool = True
    listen: str | None = None
    """``host:port`` an inbound MLLP listener binds."""
    connect: str | None = None
    """``host:port`` an outbound MLLP sender connects to."""
    insecure_http: bool = False
    """Outbound FHIR: allow an ``http://`` ``url`` (and ``auth.token_url``), which carries
    patient data and tokens in clear. Off by default: an ``http://`` URL is refused at load,
    loopback included."""
    url: str | None = None
    """Base URL of an outbound FHIR REST server: ``https://`` (``http://`` needs
    ``insecure_http: true``)."""
    subscribe: Subscription | None = None
    policy: PolicySpec | None = None
    """Outbound: the data-sharing policy applied before anything is sent (allowed sources,
    events, resource types and confidentiality, elements removed, masked or pseudonymised,
    purpose of use), see ``broker.policy`` and docs/security.md. ``None``: what the
    subscription takes is sent as it is."""
    charset: str = "utf-8"
    """Text encoding when MSH-18 is empty (inbound) or for what is sent (outbound)."""
    timezone: str = "Africa/Casablanca"
    """The sender's time zone for HL7 times without an offset."""
    hl7_version: Literal[HL7_VERSIONS] = Field(  # type: ignore[valid-type]
        "2.5.1", validation_alias=AliasChoices("hl7_version", "version")
    )
    """HL7 v2 version rendered for an outbound MLLP subscriber: MSH-12 and the version-specific
    rules of the outbound mapping (``version:`` is the older spelling). It must be one the
    outbound mappings write (their ``target.versions``); ``load_adapters`` checks it."""
    receiving_application: str | None = None
    """MSH-5 sent to an outbound HL7 subscriber (defaults to the adapter id)."""
    receiving_facility: str | None = None
    """MSH-6 sent to an outbound HL7 subscriber."""
    ack_timeout_s: float = Field(10.0, gt=0)
    ack_mode: Literal["original", "enhanced"] = "original"
    """Inbound: ``original`` answers AA/AE/AR on the connection once journalled (the default);
    ``enhanced`` answers a commit ACK (CA/CE/CR) there, per MSH-15, and sends the application
    ACK (AA/AE/AR) after processing, per MSH-16, to ``reply_to`` (HL7 v2.5.1 §2.9.3)."""
    reply_to: str | None = None
    """``host:port`` of the sender's MLLP listener for application ACKs (enhanced mode)."""
    retry: RetryPolicy = RetryPolicy()
    senders: list[Sender] | None = Field(None, min_length=1)
    """Inbound HL7 v2: the MSH-3/MSH-4 this adapter accepts (any one entry must match); a
    message claiming another sender is answered AR and kept in ``pl:rejected``. ``None``
    (the default): any sender."""
    tls: TlsSpec | None = None
    """MLLP over TLS (inbound: the listener's certificate and, for mutual TLS, the CAs of its
    clients; outbound: the CAs that verify the receiver and this side's certificate), see
    ``broker.adapters.tls``. ``None`` (the default): plain TCP. On an outbound FHIR subscriber
    (``https://``): the CA bundle, the client certificate (mutual TLS) and the server's name;
    ``None``: the system's CAs, no client certificate."""
    auth: OAuthSpec | None = None
    """Outbound FHIR: the OAuth2 client credentials or SMART Backend Services that obtain the
    bearer token (``broker.adapters.oauth``). ``None`` (the default): no Authorization header."""
    allow_from: list[str] | None = Field(None, min_length=1)
    """Inbound: the IP addresses and networks (``10.1.2.3``, ``10.1.0.0/16``, IPv6 too) a peer
    may connect or post from; any other is refused before a byte is read. ``None`` (the
    default): any address."""
    on_invalid_segment: Literal["drop", "quarantine"] = "drop"
    """Inbound HL7 v2: what a malformed segment group does (an OBX without OBX-3, fields shifted,
    an NM value that is not a number). ``drop`` delivers the rest of the message and records
    each dropped group as a ``segment-dropped`` finding; ``quarantine`` quarantines the whole
    message instead (docs/mappings.md, "Malformed segments")."""
    identifier_systems: list[IdentifierSystem] = Field(default_factory=list)
    """Inbound: the URIs of this sender's identifiers (CX-4 authority and/or CX-5 type, or a
    FHIR ``Identifier.system`` as ``local``), tried first; an identifier none of them or the
    mappings match gets the adapter's namespace (``broker.identity``, docs/adapters.md)."""
    client_ids: bool = False
    """Outbound FHIR: write resources without a business identifier as ``PUT Type/<id>``
    (update-as-create, optional in FHIR R4 §3.1.0.4.2) instead of a conditional update on a
    Passerelle identifier. Only for servers known to allow client-assigned ids."""
    conditional_references: bool = False
    """Outbound FHIR: deliver a logical reference (``type`` and ``identifier``, what FHIR input's
    references to the sender's own resources become) as a conditional reference
    ``Type?identifier=system|value`` (FHIR R4 §3.1.0.11.2), which the server resolves or refuses
    (the delivery is then a dead letter naming the entry). Only for servers that implement
    conditional references in transactions, and when the targets reach them first."""

    @field_validator("listen", "connect", "reply_to")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None:
            match = _HOST_PORT.match(value)
            if not match or not 0 < int(match["port"]) < 65536:
                msg = f"expected host:port such as 127.0.0.1:2575, got {value!r}"
                raise ValueError(msg)
        return value

    @field_validator("senders")
    @classmethod
    def _hl7v2_inbound(
        cls, value: list[Sender] | None, info: ValidationInfo
    ) -> list[Sender] | None:
        kind = (info.data.get("direction"), info.data.get("format"))
        if value is not None and kind != ("inbound", "hl7v2"):
            raise ValueError("senders (MSH-3/MSH-4) is for inbound adapters of format hl7v2")
        return value

    @field_validator("allow_from")
    @classmethod
    def _networks(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if info.data.get("direction") != "inbound":
            raise ValueError("'allow_from' is for inbound adapters (who may connect or post)")
        for entry in value:
            try:
                ipaddress.ip_network(entry)
            except ValueError as exc:
                loose = _loose_network(entry)
                hint = f"; did you mean {loose}?" if loose else ""
                msg = f"expected an IP address or network such as 10.1.0.0/16, got {entry!r}{hint}"
                raise ValueError(msg) from exc
        return value

    @field_validator("tls")
    @classmethod
    def _tls_fits(cls, value: TlsSpec | None, info: ValidationInfo) -> TlsSpec | None:
        if value is None:
            return None
        direction = info.data.get("direction")
        transport = info.data.get("transport")
        if transport == "fhir-rest":
            url = info.data.get("url")
            if url is not None and not url.startswith("https://"):
                raise ValueError("'tls' on a FHIR subscriber needs an https:// url")
        elif transport != "mllp":
            raise ValueError("'tls' is for mllp adapters and outbound fhir-rest subscribers")
        if direction == "inbound":
            if value.cert is None:
                raise ValueError("an inbound tls listener needs 'cert' (and 'key') to present")
            if value.server_name is not None:
                raise ValueError("tls 'server_name' is for outbound adapters")
        elif value.client_cert != "none":
            raise ValueError("tls 'client_cert' is for inbound adapters (what they ask of peers)")
        value.check(str(direction))
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            msg = f"expected an https:// base URL, got {value!r}"
            raise ValueError(msg)
        if value is not None and value.startswith("http://"):
            _refuse_http(value, "url", info)
        return value.rstrip("/") if value else value

    @field_validator("auth")
    @classmethod
    def _auth_fits(cls, value: OAuthSpec | None, info: ValidationInfo) -> OAuthSpec | None:
        if value is None:
            return None
        kind = (info.data.get("direction"), info.data.get("transport"))
        if kind != ("outbound", "fhir-rest"):
            raise ValueError("'auth' is for outbound fhir-rest subscribers")
        if value.token_url.startswith("http://"):
            _refuse_http(value.token_url, "auth.token_url", info)
        return value

    @field_validator("charset")
    @classmethod
    def _known_charset(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            msg = f"unknown character set {value!r}; expected a name such as utf-8 or latin-1"
            raise ValueError(msg) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            msg = f"unknown time zone {value!r}; expected an IANA name such as Africa/Casablanca"
            raise ValueError(msg) from None
        return value

    @model_validator(mode="after")
    def _transport_needs(self) -> AdapterSpec:
        needs: dict[tuple[str, str], str | None] = {
            ("inbound", "mllp"): "listen",
            ("inbound", "http"): None,  # served by the API: nothing more to configure
            ("outbound", "mllp"): "connect",
            ("outbound", "fhir-rest"): "url",
        }
        if (self.direction, self.transport) not in needs:
            msg = f"transport {self.transport!r} cannot be used {self.direction}"
            raise ValueError(msg)
        required = needs[(self.direction, self.transport)]
        if required is not None and getattr(self, required) is None:
            msg = f"a {self.direction} {self.transport} adapter needs {required!r}"
            raise ValueError(msg)
        if self.ack_mode == "enhanced" and (self.direction != "inbound" or self.reply_to is None):
            raise ValueError(
                "ack_mode: enhanced is for inbound adapters and needs 'reply_to' (host:port)"
            )
        if self.direction == "outbound" and self.on_invalid_segment != "drop":
            raise ValueError(
                "on_invalid_segment is for inbound adapters (what a malformed segment does)"
            )
        if self.identifier_systems and self.direction != "inbound":
            raise ValueError("'identifier_systems' is for inbound adapters")
        if self.client_ids and (self.direction, self.transport) != ("outbound", "fhir-rest"):
            raise ValueError("'client_ids' is for outbound fhir-rest adapters")
        if self.insecure_http and (self.direction, self.transport) != ("outbound", "fhir-rest"):
            raise ValueError("'insecure_http' is for outbound fhir-rest subscribers")
        if self.conditional_references and (self.direction, self.transport) != (
            "outbound",
            "fhir-rest",
        ):
            raise ValueError("'conditional_references' is for outbound fhir-rest adapters")
        if (self.direction, self.transport, self.format) == (
            "outbound",
            "mllp",
            "hl7v2",
        ) and charset_code(self.charset, self.version) is None:
            msg = (
                f"charset {self.charset!r} has no HL7 table 0211 code for MSH-18; "
                "expected utf-8, latin-1 (8859/1) or another ISO 8859 set"
            )
            raise ValueError(msg)
        if self.policy is not None and self.direction != "outbound":
            raise ValueError("'policy' is for outbound adapters (what a subscriber may receive)")
        if self.direction == "outbound" and self.subscribe is None:
            raise ValueError("an outbound adapter needs 'subscribe' (the events it receives)")
        return self

    def admits(self, host: str) -> bool:
        """Tell whether a peer at IP address ``host`` may connect (``allow_from``).

        An IPv4 address seen through an IPv6 socket (``::ffff:10.1.2.3``) is matched as IPv4; a
        host that is not an IP address is refused when there is a list.
        """
        if self.allow_from is None:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in ipaddress.ip_network(entry) for entry in self.allow_from)

    @property
    def version(self) -> str:
        """The HL7 v2 version rendered for this subscriber (``hl7_version``)."""
        return str(self.hl7_version)

    @property
    def host_port(self) -> tuple[str, int]:
        """The ``listen`` or ``connect`` address as (host, port)."""
        value = self.listen or self.connect
        if value is None:
            msg = f"adapter {self.id} has no listen/connect address"
            raise AdapterSpecError(self.id, None, "listen", msg)
        host, _, port = value.rpartition(":")
        return host.strip("[]"), int(port)


def _refuse_http(url: str, key: str, info: ValidationInfo) -> None:
    """Refuse a plain-HTTP ``url`` unless the registration allows it (``insecure_http``)."""
    if info.data.get("insecure_http"):
        return
    msg = (
        f"{key} {url!r} is plain http: patient data and tokens would travel in clear. Use "
        "https://, or add 'insecure_http: true' to the registration to allow it (a test peer)"
    )
    raise ValueError(msg)


def _loose_network(entry: str) -> str | None:
    """The network ``entry`` names when its host bits are set (``10.1.2.3/16``), else None."""
    try:
        return str(ipaddress.ip_network(entry, strict=False))
    except ValueError:
        return None


def load_adapters(
    directory: Path, *, hl7_versions: Collection[str] | None = None
) -> list[AdapterSpec]:
    """Load every ``*.yaml`` registration in ``directory``, refusing duplicates.

    Args:
        directory: the ``adapters/`` directory.
        hl7_versions: the HL7 v2 versions the outbound mappings write
            (``MappingSet.hl7_versions``); when given, an outbound HL7 v2 subscriber's
            ``hl7_version`` must be one of them.

    Raises:
        AdapterSpecError: naming the file, line, key and reason of the first problem.
    """
    specs: list[AdapterSpec] = []
    seen: dict[str, Path] = {}
    if not directory.is_dir():
        raise AdapterSpecError(str(directory), None, "", "adapters directory does not exist")
    for path in sorted(directory.glob("*.y*ml")):
        spec = load_model(path, AdapterSpec, AdapterSpecError)
        if spec.id in seen:
            msg = f"adapter id {spec.id!r} is already registered by {seen[spec.id]}"
            raise AdapterSpecError(str(path), 1, "id", msg)
        seen[spec.id] = path
        if hl7_versions is not None:
            _check_hl7_version(spec, path, hl7_versions)
        specs.append(spec)
    return specs


def _check_hl7_version(spec: AdapterSpec, path: Path, versions: Collection[str]) -> None:
    if spec.direction != "outbound" or spec.format != "hl7v2" or spec.hl7_version in versions:
        return
    _, lines = read_yaml(path, AdapterSpecError)
    key = "hl7_version" if ("hl7_version",) in lines else "version"
    known = ", ".join(sorted(versions, key=HL7_VERSIONS.index)) or "none"
    msg = f"no outbound mapping writes HL7 v{spec.hl7_version}; expected one of {known}"
    raise AdapterSpecError(str(path), lines.get((key,)), key, msg)
