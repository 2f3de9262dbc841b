"""Data keys: from the environment or a file, generated owner-only on a fresh install, rotated."""

from __future__ import annotations

import base64
import stat

import pytest

from broker import datakeys
from broker.errors import DataKeyError
from broker.settings import Settings

KEY = base64.b64encode(bytes(32)).decode()


def _settings(tmp_path, **values) -> Settings:
    values.setdefault("data_key", None)  # not the suite's environment key
    return Settings(data_dir=tmp_path / "data", **values)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestLoad:
    def test_the_environment_names_several_keys_the_first_current(self, tmp_path):
        """``ID:BASE64`` pairs separated by commas; the first seals."""
        ring = datakeys.load_ring(_settings(tmp_path, data_key=f"a:{KEY},b:{KEY}"))
        assert ring is not None
        assert list(ring.keys) == ["a", "b"]
        assert ring.current == "a"

    def test_a_malformed_line_names_the_file_and_line(self, tmp_path):
        """A 16-byte key on line 3 of the file: refused, saying where."""
        path = tmp_path / "keys"
        short = base64.b64encode(bytes(16)).decode()
        path.write_text(f"# comment\nk1 {KEY}\nk2 {short}\n")
        with pytest.raises(DataKeyError, match=rf"{path}:3: a data key must be"):
            datakeys.load_ring(_settings(tmp_path, data_key_file=path))

    def test_no_key_configured_is_a_clear_error_with_what_to_do(self, tmp_path):
        """Encryption on, nothing configured and no generated file: DataKeyError, never clear."""
        with pytest.raises(DataKeyError, match="PASSERELLE_DATA_ENCRYPTION=off"):
            datakeys.load_ring(_settings(tmp_path))

    def test_off_needs_no_key(self, tmp_path):
        """``PASSERELLE_DATA_ENCRYPTION=off``: no ring, no error."""
        assert datakeys.load_ring(_settings(tmp_path, data_encryption="off")) is None


class TestFreshInstall:
    def test_serve_generates_an_owner_only_key_file_once(self, tmp_path):
        """``data-key`` in the data dir, mode 0600, kept across starts, read by every process."""
        first = datakeys.ensure_data_key(_settings(tmp_path))
        path = tmp_path / "data" / "data-key"
        assert first.data_key_file == path.resolve()
        assert _mode(path) == 0o600
        text = path.read_text()
        again = datakeys.ensure_data_key(_settings(tmp_path))
        assert path.read_text() == text
        ring = datakeys.load_ring(again)
        assert ring is not None
        assert len(ring.keys) == 1

    def test_a_configured_environment_key_writes_no_file(self, tmp_path):
        """``PASSERELLE_DATA_KEY`` set: nothing is generated."""
        datakeys.ensure_data_key(_settings(tmp_path, data_key=f"a:{KEY}"))
        assert not (tmp_path / "data" / "data-key").exists()


class TestRotate:
    def test_rotate_puts_a_new_current_key_first_and_keeps_the_old(self, tmp_path):
        """After rotate: two keys, the new one current, the old one still there; 0600 kept."""
        settings = datakeys.ensure_data_key(_settings(tmp_path))
        (old,) = datakeys.load_ring(settings).keys
        new = datakeys.rotate(settings)
        ring = datakeys.load_ring(settings)
        assert list(ring.keys) == [new, old]
        assert _mode(settings.data_key_file) == 0o600

    def test_retire_removes_an_old_key_but_never_the_current(self, tmp_path):
        """The current key cannot be retired; an old one can."""
        settings = datakeys.ensure_data_key(_settings(tmp_path))
        (old,) = datakeys.load_ring(settings).keys
        new = datakeys.rotate(settings)
        with pytest.raises(DataKeyError, match="is the current data key"):
            datakeys.retire(settings, new)
        datakeys.retire(settings, old)
        assert list(datakeys.load_ring(settings).keys) == [new]

    def test_keys_from_the_environment_are_rotated_there(self, tmp_path):
        """No file to write: rotate says how to do it in the environment."""
        with pytest.raises(DataKeyError, match="come from PASSERELLE_DATA_KEY"):
            datakeys.rotate(_settings(tmp_path, data_key=f"a:{KEY}"))
