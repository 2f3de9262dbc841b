"""The runtime file (``broker.running``): written by serve, found by the ops commands."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from pydantic import SecretStr

from broker import running
from broker.settings import Settings
from broker.testing import run_cli, write_adapter


def unset_env() -> dict[str, str | None]:
    return {k: None for k in os.environ if k.startswith("PASSERELLE_")}


def gone_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def registrations(directory: Path, subscriber: str) -> Path:
    write_adapter(
        directory,
        {
            "id": subscriber,
            "name": subscriber,
            "direction": "outbound",
            "transport": "fhir-rest",
            "insecure_http": True,
            "url": "http://127.0.0.1:9/fhir",
            "subscribe": {"events": ["ADT^*"]},
        },
    )
    return directory


class TestRuntimeFile:
    def test_it_is_in_the_xdg_state_dir(self, tmp_path, monkeypatch):
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
        assert running.runtime_path() == tmp_path / "passerelle" / "runtime.json"

    def test_it_is_owner_only_and_keeps_no_token(self, tmp_path):
        """The file is 0600, names the token file, never the token; paths are absolute."""
        settings = Settings(data_dir=Path("var-x"), api_token=SecretStr("s3cret-token"))
        path = running.write(settings, path=tmp_path / "runtime.json")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text()
        assert "s3cret-token" not in text
        data = json.loads(text)
        assert data["pid"] == os.getpid()
        assert data["token_file"] is None  # the token came from the settings
        assert Path(data["settings"]["data_dir"]).is_absolute()
        assert data["api_url"] == "http://127.0.0.1:8000"

    def test_a_live_one_is_found(self, tmp_path):
        path = running.write(Settings(http_port=8123), path=tmp_path / "r.json")
        found, note = running.find(path)
        assert note is None
        assert found is not None
        assert (found.pid, found.api_url) == (os.getpid(), "http://127.0.0.1:8123")

    def test_a_stale_one_is_ignored_with_a_note(self, tmp_path):
        path = running.write(Settings(), pid=gone_pid(), path=tmp_path / "r.json")
        found, note = running.find(path)
        assert found is None
        assert note is not None
        assert "is gone" in note

    def test_garbage_is_ignored_with_a_note(self, tmp_path):
        path = tmp_path / "r.json"
        path.write_text("{not json")
        assert running.find(path) == (
            None,
            f"ignoring {path}: it is not a runtime file Passerelle wrote",
        )

    def test_forget_leaves_another_serve_s_file(self, tmp_path):
        path = running.write(Settings(), pid=os.getpid() + 1, path=tmp_path / "r.json")
        running.forget(path=path)
        assert path.exists()
        running.write(Settings(), path=path)
        running.forget(path=path)
        assert not path.exists()


class TestOpsCommandsFindTheRunningSystem:
    @pytest.fixture(autouse=True)
    def _clean(self):
        yield
        running.runtime_path().unlink(missing_ok=True)

    def test_they_use_the_running_serve_s_settings(self, tmp_path, redis_url, redis_client):
        """With no PASSERELLE_ setting, `dead-letters list` reaches the serve's Redis and reads
        its registrations."""
        adapters = registrations(tmp_path / "adapters", "from-runtime")
        running.write(Settings(redis_url=redis_url, adapters_dir=adapters, data_dir=tmp_path))
        done = run_cli("dead-letters", "list", "from-runtime", "--json", env=unset_env())
        assert done.code == 0, done.stderr
        assert json.loads(done.stdout) == []

    def test_explicit_settings_win(self, tmp_path, redis_url, redis_client):
        """PASSERELLE_ADAPTERS_DIR beats the runtime file's registrations."""
        theirs = registrations(tmp_path / "theirs", "from-runtime")
        mine = registrations(tmp_path / "mine", "from-env")
        running.write(Settings(redis_url=redis_url, adapters_dir=theirs, data_dir=tmp_path))
        env = {**unset_env(), "PASSERELLE_ADAPTERS_DIR": str(mine)}
        done = run_cli("dead-letters", "list", "from-runtime", env=env)
        assert done.code == 2
        assert "the subscribers are: from-env" in done.stderr
        assert run_cli("dead-letters", "list", "from-env", env=env).code == 0

    def test_a_stale_file_is_noted_and_ignored(self, tmp_path, redis_url, redis_client):
        """The serve is gone: a note on stderr, and the environment's settings are used."""
        adapters = registrations(tmp_path / "adapters", "from-env")
        running.write(
            Settings(redis_url="redis://127.0.0.1:9/0", data_dir=tmp_path), pid=gone_pid()
        )
        env = {
            **unset_env(),
            "PASSERELLE_REDIS_URL": redis_url,
            "PASSERELLE_ADAPTERS_DIR": str(adapters),
        }
        done = run_cli("dead-letters", "list", "from-env", env=env)
        assert done.code == 0, done.stderr
        (note,) = done.stderr.splitlines()
        assert note.startswith("passerelle: note: ignoring ")
        assert "is gone" in note
