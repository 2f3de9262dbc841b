"""Data keys: where the key ring comes from, how a fresh install gets one, and rotation.

Keys come, in this order, from ``PASSERELLE_DATA_KEY`` (``ID:BASE64`` pairs separated by
commas), ``PASSERELLE_DATA_KEY_FILE``, or ``DATA_DIR/data-key`` (written by ``serve`` on a fresh
install, like ``api-token``). A key file holds one key a line, ``ID BASE64`` (32 random bytes),
the current key first; lines starting with ``#`` are comments. The file is created owner-only
(0600). ``PASSERELLE_DATA_ENCRYPTION=off`` installs no ring (bodies are then written in clear).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from pathlib import Path

from broker import sealing
from broker.errors import DataKeyError
from broker.sealing import KeyRing
from broker.settings import Settings

__all__ = [
    "DEFAULT_FILE",
    "ensure_data_key",
    "key_file",
    "load_ring",
    "new_key_line",
    "parse_keys",
    "retire",
    "ring_text",
    "rotate",
    "use",
    "use_later",
]

DEFAULT_FILE = "data-key"
"""The key file ``serve`` generates in the data directory when no key is configured."""
_HEADER = (
    "# Passerelle data keys: one 'ID BASE64' a line, the current (sealing) key first; every key\n"
    "# here opens bodies sealed with it. Keep this file owner-only and outside the data directory\n"
    "# in production; losing a key loses every body sealed with it.\n"
)


def parse_keys(text: str, origin: str) -> KeyRing:
    """A key ring from key file text (or the environment's comma-separated ``ID:BASE64``).

    Raises:
        DataKeyError: a line is malformed (named by ``origin`` and line number).
    """
    keys: dict[str, bytes] = {}
    entries = [
        (number, entry.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if not line.lstrip().startswith("#")
        for entry in line.split(",")
    ]
    for number, entry in entries:
        if not entry:
            continue
        key_id, _, encoded = entry.replace(":", " ", 1).partition(" ")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not key_id or len(key) != 32:
            msg = (
                f"{origin}:{number}: a data key must be 'ID BASE64' with 32 bytes of key "
                "(passerelle keys rotate writes one)"
            )
            raise DataKeyError(msg)
        if key_id in keys:
            msg = f"{origin}:{number}: the data key id {key_id} appears twice"
            raise DataKeyError(msg, key_id)
        keys[key_id] = key
    if not keys:
        msg = f"{origin} holds no data key"
        raise DataKeyError(msg)
    return KeyRing(keys)


def key_file(settings: Settings) -> Path:
    """The key file: the configured one, else ``DATA_DIR/data-key``."""
    return settings.data_key_file or settings.data_dir / DEFAULT_FILE


def load_ring(settings: Settings) -> KeyRing | None:
    """The key ring ``settings`` name; ``None`` when encryption is off.

    Raises:
        DataKeyError: encryption is on and no key is configured, or a key is malformed.
    """
    if settings.data_encryption == "off":
        return None
    if settings.data_key is not None:
        return parse_keys(settings.data_key.get_secret_value(), "PASSERELLE_DATA_KEY")
    path = key_file(settings)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = (
            f"no data key: {path} does not exist and PASSERELLE_DATA_KEY is not set; run "
            "`passerelle serve` once to generate one, point PASSERELLE_DATA_KEY_FILE at the "
            "key file, or set PASSERELLE_DATA_ENCRYPTION=off (development only)"
        )
        raise DataKeyError(msg) from None
    return parse_keys(text, str(path))


def use(settings: Settings) -> KeyRing | None:
    """Install the key ring ``settings`` name as this process's (``broker.sealing``)."""
    ring = load_ring(settings)
    sealing.install(ring)
    return ring


def use_later(settings: Settings) -> None:
    """Load the key ring ``settings`` name when a body is first sealed or opened."""
    sealing.defer(lambda: load_ring(settings))


def ring_text(ring: KeyRing) -> str:
    """A key file's text holding ``ring`` (the current key first)."""
    lines = (f"{key_id} {base64.b64encode(key).decode()}\n" for key_id, key in ring.keys.items())
    return _HEADER + "".join(lines)


def new_key_line() -> str:
    """A new random key as a key file line; its id says when it was made."""
    key_id = f"k{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(3)}"
    return f"{key_id} {base64.b64encode(secrets.token_bytes(32)).decode()}"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a 0600 file renamed into place."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.unlink(missing_ok=True)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)
    partial.replace(path)


def ensure_data_key(settings: Settings) -> Settings:
    """Settings with a data key: the configured one, else ``DATA_DIR/data-key`` (made if new).

    Encryption off, or ``PASSERELLE_DATA_KEY`` set: ``settings`` as they are.
    """
    if settings.data_encryption == "off" or settings.data_key is not None:
        return settings
    path = key_file(settings)
    if settings.data_key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(path, _HEADER + new_key_line() + "\n")
    return settings.model_copy(update={"data_key_file": path.resolve()})


def rotate(settings: Settings) -> str:
    """Add a new current key at the top of the key file; return its id.

    The old keys stay (they open what they sealed) until ``passerelle keys reencrypt`` moved
    everything to the new one. Running processes take the new key when they restart.

    Raises:
        DataKeyError: keys come from ``PASSERELLE_DATA_KEY`` (edit it there), or the file is
            missing or malformed.
    """
    if settings.data_key is not None:
        msg = (
            "the data keys come from PASSERELLE_DATA_KEY: put a new 'ID:BASE64' pair first in "
            "it (keep the old ones after it) and restart"
        )
        raise DataKeyError(msg)
    path = key_file(settings)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text.strip():
        parse_keys(text, str(path))  # refuse to rewrite a file we cannot read
    line = new_key_line()
    comments = "".join(x + "\n" for x in text.splitlines() if x.startswith("#")) or _HEADER
    rest = "".join(x + "\n" for x in text.splitlines() if x.strip() and not x.startswith("#"))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(path, comments + line + "\n" + rest)
    return line.split(" ", 1)[0]


def retire(settings: Settings, key_id: str) -> None:
    """Remove ``key_id`` from the key file (after ``reencrypt`` left nothing sealed with it).

    Raises:
        DataKeyError: it is the current key, or not in the file.
    """
    path = key_file(settings)
    text = path.read_text(encoding="utf-8")
    ring = parse_keys(text, str(path))
    if key_id not in ring.keys:
        msg = f"{path} holds no data key {key_id}"
        raise DataKeyError(msg, key_id)
    if key_id == ring.current:
        msg = f"{key_id} is the current data key; rotate first, then re-encrypt, then retire it"
        raise DataKeyError(msg, key_id)
    kept = [x for x in text.splitlines() if x.replace(":", " ", 1).split(" ", 1)[0] != key_id]
    _write_private(path, "".join(x + "\n" for x in kept))
