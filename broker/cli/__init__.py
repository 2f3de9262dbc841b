"""``passerelle``: serve the broker, run its parts alone, translate offline, check configuration.

One module per family of commands, and ``_common`` for what they share (settings, the one-line
failure, JSON output, option types):

- ``processes``: ``serve``, ``listen``, ``worker``, ``beat``, ``api``: the long-running roles
- ``check``: ``check``, the checks every role but ``beat`` runs before it starts
- ``translate``: ``translate``, one message through the mappings, offline
- ``mappings``: ``mappings lint|test|review|style``
- ``ops``: ``replay``; ``dead_letters``: ``dead-letters ...``: a running broker's deliveries
- ``messages``: ``messages search|show|trace``: the message store; ``store``: its writer role,
  ``store upgrade|purge``
- ``users``: ``users add|list|disable|enable``, ``tokens create|list|revoke``: who may use the
  API and the console
- ``policy``: ``policy explain``, ``consent add|list|revoke``: data-sharing policies and consent
  ``store upgrade|purge``; ``audit``: ``audit verify|export|show``, the audit trail
- ``plugins``: commands other distributions add (the entry-point group ``passerelle.cli``),
  ``demo`` among them

Heavy modules (celery, fastapi, fhir.resources, the mapping engine) are imported by the
command that needs them, and the plug-ins are loaded when the command is first built (``app``,
``main()``), not when ``broker.cli`` is imported: a plug-in module may import
``broker.cli``'s helpers for plug-ins (``fail``, ``load_settings``, ``DataDirOpt``).
"""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from broker.cli._common import DataDirOpt, fail, load_settings
from broker.cli.audit import audit_app
from broker.cli.check import check
from broker.cli.dead_letters import dead_letters_app
from broker.cli.keys import keys_app
from broker.cli.mappings import mappings_app
from broker.cli.messages import messages_app
from broker.cli.ops import replay
from broker.cli.peers import ping, send
from broker.cli.plugins import register_plugins
from broker.cli.policy import consent_app, policy_app
from broker.cli.processes import api, beat, listen, serve, worker
from broker.cli.status import status
from broker.cli.store import store_app
from broker.cli.translate import translate
from broker.cli.users import tokens_app, users_app

__all__ = [
    "DataDirOpt",  # for plug-in commands
    "app",
    "build_app",
    "fail",  # for plug-in commands
    "load_settings",  # for plug-in commands
    "main",
]


def build_app() -> typer.Typer:
    """The ``passerelle`` command: the built-in commands, then the installed plug-ins."""
    app = typer.Typer(
        name="passerelle",
        help="Passerelle: HL7 v2 / FHIR R4 interoperability message broker.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for command in (serve, listen, worker, beat, api, check, translate, replay, status, send, ping):
        app.command()(command)
    app.add_typer(mappings_app, name="mappings")
    app.add_typer(dead_letters_app, name="dead-letters")
    app.add_typer(messages_app, name="messages")
    app.add_typer(store_app, name="store")
    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(policy_app, name="policy")
    app.add_typer(consent_app, name="consent")
    app.add_typer(audit_app, name="audit")
    app.add_typer(keys_app, name="keys")
    register_plugins(app)
    app.callback()(_main_options)
    return app


def _print_version(wanted: bool) -> None:
    """``--version``: the installed distribution's version, from its metadata."""
    if not wanted:
        return
    import importlib.metadata

    try:
        version = importlib.metadata.version("passerelle")
    except importlib.metadata.PackageNotFoundError:
        fail("the passerelle distribution is not installed here (run `make` in a checkout)")
    typer.echo(f"passerelle {version}")
    raise typer.Exit


def _main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the installed version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Passerelle: HL7 v2 / FHIR R4 interoperability message broker."""


@functools.cache
def _installed() -> typer.Typer:
    """The command with the plug-ins installed in this environment, built once."""
    return build_app()


def __getattr__(name: str) -> typer.Typer:
    """``app``: the ``passerelle`` command as the console script runs it, built on first use."""
    if name == "app":
        return _installed()
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def main() -> None:
    """Entry point of the ``passerelle`` command."""
    _installed()()
