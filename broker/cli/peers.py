"""``passerelle send`` and ``passerelle ping``: test a connection by hand, from the terminal.

``send`` plays a hospital system: it sends the messages of a file to any MLLP listener and
prints each ACK. ``ping`` tests one registered connection by its adapter id, with the running
system's registrations (``broker.running``): an MLLP subscriber is connected to (and, with
``--message``, sent a synthetic NMQ^N01 and its ACK read), a FHIR subscriber asked for its
``metadata``, an inbound adapter's listener knocked on.

Exit codes: 0 accepted / answered, 1 refused or unreachable (one line on stderr), 2 usage errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from broker.cli._common import fail, log_errors_only, print_json
from broker.cli.ops import ops_settings, registered

if TYPE_CHECKING:
    from broker.adapters.spec import AdapterSpec
    from broker.ops.probe import Exchange, Probe

__all__ = ["ping", "send"]

JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON document instead of lines.")]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to connect, and to wait for a reply.")
]


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--to {value!r} is not HOST:PORT (e.g. 127.0.0.1:2575)", 2)
    return host, int(port)


def _line(exchange: Exchange) -> str:
    code = exchange.ack_code or "--"
    text = f"  {exchange.text}" if exchange.text else ""
    return f"{exchange.index:>4}  {exchange.control_id or '(no MSH-10)'}  {code}{text}"


def send(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="HL7 v2 message(s); segments end with \\r or \\n."
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="The MLLP listener, HOST:PORT.")],
    timeout: TimeoutOpt = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Send the HL7 v2 messages of FILE over MLLP, one at a time, and print each ACK."""
    from broker.adapters.mllp import MllpClient, MllpError
    from broker.ops.probe import exchange_all, split_messages

    host, port = _host_port(to)
    log_errors_only()
    try:
        messages = split_messages(file.read_bytes())
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}")
    except ValueError as exc:
        fail(f"{file}: {exc}", 2)
    done: list[Exchange] = []
    broken: str | None = None
    with MllpClient(host, port, timeout=timeout) as client:
        try:
            for exchange in exchange_all(client, messages):
                done.append(exchange)
                if not as_json:
                    typer.echo(_line(exchange))
        except MllpError as exc:
            broken = str(exc)
    if as_json:
        print_json([e.as_dict() for e in done])
    if broken is not None:
        fail(f"{broken}; {len(done)} of {len(messages)} message(s) acknowledged before it")
    refused = [e for e in done if not e.accepted]
    if refused:
        codes = ", ".join(sorted({e.ack_code or "no ACK" for e in refused}))
        fail(f"{len(refused)} of {len(messages)} message(s) not accepted ({codes}); see above")


def _report(probe: Probe, as_json: bool, adapter: str) -> None:
    if as_json:
        print_json({"adapter": adapter, **probe.as_dict()})
    elif probe.ok:
        took = f" ({probe.ms} ms)" if probe.ms is not None else ""
        typer.echo(f"{adapter}: {probe.summary}{took}")
    if not probe.ok:
        fail(f"{adapter}: {probe.summary}")


def _fhir_ping(spec: AdapterSpec, timeout: float) -> Probe:
    """``metadata`` of a FHIR subscriber as its deliveries reach it: its TLS and its token."""
    from broker.delivery.oauth import TokenSource
    from broker.errors import RetryableDeliveryError
    from broker.ops.probe import Probe, fhir_metadata

    tls = spec.tls
    context = tls.client_context() if tls else None
    authorization = None
    if spec.auth is not None:
        tokens = TokenSource(spec.id, spec.auth, context=context, timeout=timeout)
        try:
            authorization = tokens.authorization()
        except RetryableDeliveryError as exc:
            return Probe(False, spec.auth.token_url, f"no access token: {exc}")
    return fhir_metadata(
        spec.url or "",
        timeout,
        context=context,
        server_name=tls.server_name if tls else None,
        authorization=authorization,
    )


def ping(
    adapter: Annotated[str, typer.Argument(help="The adapter id of a registration.")],
    message: Annotated[
        bool,
        typer.Option(
            "--message",
            help="MLLP subscriber: also send a synthetic NMQ^N01 (no patient) and read its ACK.",
        ),
    ] = False,
    timeout: TimeoutOpt = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Test a registered connection: MLLP connect (and ACK), FHIR metadata, listener port."""
    from broker import running
    from broker.ops.probe import (
        api_health,
        mllp_ping,
        ping_message,
        tcp_answers,
        tls_answers,
        unverified_context,
    )

    settings = ops_settings()
    adapters = {a.id: a for a in registered(settings)}
    spec = adapters.get(adapter)
    if spec is None:
        known = ", ".join(sorted(adapters)) or f"none in {settings.adapters_dir}"
        fail(f"no adapter {adapter!r}; the adapters are: {known}", 2)
    if spec.transport == "fhir-rest":
        probe = _fhir_ping(spec, timeout)
    elif spec.transport == "http":
        # An inbound HTTP adapter is a route of the API: the API must answer.
        probe = api_health(running.api_url(settings), timeout)
    elif spec.direction == "inbound":
        host, port = spec.host_port
        if spec.tls is not None:
            # Its tls.ca verifies its clients, not necessarily its own certificate: the ping
            # shows that the listener speaks TLS and which certificate it presents.
            probe = tls_answers(host, port, timeout, unverified_context())
        else:
            probe = tcp_answers(host, port, timeout)
    else:
        host, port = spec.host_port
        wanted = ping_message(spec.receiving_application or spec.id, spec.receiving_facility or "")
        tls = spec.tls
        probe = mllp_ping(
            host,
            port,
            timeout,
            wanted if message else None,
            tls=tls.client_context() if tls else None,
            server_name=tls.server_name if tls else None,
        )
    _report(probe, as_json, adapter)
