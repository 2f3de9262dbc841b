"""The audit key: what makes the chain's links unforgeable, and patient references unguessable.

Read from ``PASSERELLE_AUDIT_KEY`` (the key itself), else ``PASSERELLE_AUDIT_KEY_FILE``, else
``<data dir>/audit-key``; ``passerelle serve`` (and the store's writer, the chain's one
appender) generate that file, readable by its owner only, when no key is configured, as they do
the first API token. Whoever holds the key can rewrite the whole chain: keep it away from those
who administer the database (docs/security.md, "Audit trail").
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from broker.audit.chain import keyed
from broker.errors import ConfigurationError
from broker.settings import Settings

__all__ = ["KEY_FILE", "ensure_key", "key_path", "load_key", "patient_ref"]

KEY_FILE = "audit-key"
"""The generated key's file name in the data directory."""
_MIN_BYTES = 16


def key_path(settings: Settings) -> Path:
    """Where the key file is: the configured file, else ``<data dir>/audit-key``."""
    return settings.audit_key_file or settings.data_dir / KEY_FILE


def load_key(settings: Settings) -> bytes:
    """The audit key, from the environment or its file.

    Raises:
        ConfigurationError: no key is configured and no key file exists, or the key is shorter
            than 16 bytes.
    """
    if settings.audit_key is not None:
        key = settings.audit_key.get_secret_value().encode()
        where = "PASSERELLE_AUDIT_KEY"
    else:
        path = key_path(settings)
        try:
            key = path.read_bytes().strip()
        except FileNotFoundError:
            msg = (
                f"no audit key: set PASSERELLE_AUDIT_KEY or PASSERELLE_AUDIT_KEY_FILE, or let "
                f"`passerelle serve` generate {path}"
            )
            raise ConfigurationError(msg) from None
        where = str(path)
    if len(key) < _MIN_BYTES:
        msg = f"the audit key in {where} is shorter than {_MIN_BYTES} bytes; use 32 random bytes"
        raise ConfigurationError(msg)
    return key


def ensure_key(settings: Settings) -> bytes:
    """The audit key; when none is configured, one generated into the data directory (0600)."""
    if settings.audit_key is None and settings.audit_key_file is None:
        path = settings.data_dir / KEY_FILE
        if not path.exists():
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: read theirs
            else:
                with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                    file.write(secrets.token_urlsafe(32))
    return load_key(settings)


def patient_ref(key: bytes, identity: str) -> str:
    """A patient's reference in the trail: keyed, so nobody without the key can test guesses.

    ``identity`` is ``broker.identity``'s ``system|value`` (``Envelope.partition_key``) or a
    bare identifier value (a search); the auditor who holds an identifier finds the entries by
    computing the same reference (``passerelle audit show --patient``).
    """
    digest = keyed(key).copy()
    digest.update(b"patient\x00" + identity.encode())
    return digest.hexdigest()[:32]
