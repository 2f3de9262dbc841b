"""``passerelle keys``: status, rotate, reencrypt and retire on a real Redis and SQLite store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from broker import keys, sealing
from broker.datakeys import load_ring, parse_keys
from broker.settings import Settings
from broker.testing import CliRun, run_cli


def _env(tmp_path: Path, redis_url: str) -> dict[str, str | None]:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_REDIS_URL=redis_url,
        PASSERELLE_DATA_DIR=str(tmp_path / "var"),
        PASSERELLE_DATA_KEY_FILE=str(tmp_path / "keys" / "data-key"),
    )
    return env


def _keys(tmp_path: Path) -> list[str]:
    settings = Settings(data_key=None, data_key_file=tmp_path / "keys" / "data-key")
    ring = load_ring(settings)
    assert ring is not None
    return list(ring.keys)


def _run(env: dict[str, str | None], *args: str) -> CliRun:
    done = run_cli("keys", *args, env=env)
    assert done.code == 0, done.stderr
    return done


def test_rotate_reencrypt_and_retire_end_to_end(tmp_path, redis_url, redis_client):
    """Rotate twice, an envelope sealed with the first key is re-encrypted to the newest, the
    first key is retired; status reports ids only, never a key."""
    env = _env(tmp_path, redis_url)
    _run(env, "rotate")
    (first,) = _keys(tmp_path)
    text = (tmp_path / "keys" / "data-key").read_text()
    first_ring = parse_keys(text, "file")
    redis_client.set(keys.envelope("e1"), first_ring.seal(b'{"id":"e1"}', "e1", "env"))
    done = _run(env, "rotate")
    assert "restart passerelle" in done.stdout
    second, old = _keys(tmp_path)
    assert old == first
    status = json.loads(_run(env, "status", "--json").stdout)
    assert status["current"] == second
    assert status["keys"] == [second, first]
    assert first_ring.keys[first].hex() not in json.dumps(status)
    done = _run(env, "reencrypt")
    assert "1 envelopes" in done.stdout
    stored = redis_client.get(keys.envelope("e1"))
    assert sealing.key_id_of(stored) == second
    _run(env, "retire", first)
    assert _keys(tmp_path) == [second]
    assert (
        parse_keys((tmp_path / "keys" / "data-key").read_text(), "f").open(stored, "e1", "env")
        == b'{"id":"e1"}'
    )


def test_retire_refuses_while_journal_entries_use_the_key(tmp_path, redis_url, redis_client):
    """A journal entry still sealed with the old key: retire exits 1 saying how many."""
    env = _env(tmp_path, redis_url)
    _run(env, "rotate")
    (first,) = _keys(tmp_path)
    ring = parse_keys((tmp_path / "keys" / "data-key").read_text(), "file")
    redis_client.xadd(keys.inbound(0), {"id": "e2", "raw": ring.seal(b"MSH|", "e2", "raw")})
    _run(env, "rotate")
    done = run_cli("keys", "retire", first, env=env)
    assert done.code == 1
    assert f"1 journal or rejected entries are still sealed with {first}" in done.stderr
    assert first in _keys(tmp_path)
    assert isinstance(redis_client, redis.Redis)
