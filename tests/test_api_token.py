"""The API token ``serve`` keeps in ``<data dir>/api-token`` (``ensure_api_token``, README).

Each test builds the :class:`~broker.supervisor.Supervisor` as ``passerelle serve`` does (its
constructor settles the token) with no child process, and reads the file back from the disk.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.settings import Settings
from broker.supervisor import Supervisor, settings_env


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PASSERELLE_API_TOKEN", raising=False)


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=lambda mask: f"umask{mask:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask while the token is written: permissive (000), usual (022), strict (077)."""
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _serve_settings(data_dir: Path) -> Settings:
    return Supervisor(Settings(data_dir=data_dir, adapters_dir=data_dir), roles=()).settings


def test_a_generated_token_is_written_owner_read_write_only_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    """No configured token: serve writes one to <data dir>/api-token with mode 0600, not wider."""
    data_dir = tmp_path / "var"
    settings = _serve_settings(data_dir)
    path = data_dir / "api-token"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, f"api-token has mode {mode:04o} under umask {umask:03o}"
    token = path.read_text(encoding="utf-8").strip()
    assert len(token) >= 32
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == token
    assert settings_env(settings)["PASSERELLE_API_TOKEN"] == token  # what the children get


def test_the_token_is_reused_on_the_next_start(tmp_path: Path) -> None:
    """A second start on the same data dir serves the token in the file, and leaves the file as is."""
    first = _serve_settings(tmp_path)
    path = tmp_path / "api-token"
    written = path.read_bytes()
    second = _serve_settings(tmp_path)
    assert first.api_token is not None
    assert second.api_token is not None
    assert second.api_token.get_secret_value() == first.api_token.get_secret_value()
    assert path.read_bytes() == written
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_explicit_token_is_served_and_never_written_to_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PASSERELLE_API_TOKEN set: serve uses it and writes no api-token file anywhere in the data dir."""
    explicit = "operator-chosen-token-0123456789abcdef"
    monkeypatch.setenv("PASSERELLE_API_TOKEN", explicit)
    settings = _serve_settings(tmp_path)
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == explicit
    assert not (tmp_path / "api-token").exists()
    on_disk = [
        p for p in tmp_path.rglob("*") if p.is_file() and explicit.encode() in p.read_bytes()
    ]
    assert on_disk == []
