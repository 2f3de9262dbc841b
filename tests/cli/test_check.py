"""``passerelle check``: the configuration's problems, each as ``file:line: key: reason``."""

from __future__ import annotations

import re

from broker.settings import REPO_ROOT
from broker.testing import run_cli as cli
from broker.testing import write_adapter


class TestCheck:
    def test_the_repository_configuration_is_valid(self):
        """`check` on the repository's adapters and mappings exits 0."""
        run = cli(
            "check",
            "--adapters",
            str(REPO_ROOT / "adapters"),
            "--mappings",
            str(REPO_ROOT / "mappings"),
        )
        assert run.code == 0, run.stderr
        assert not run.crashed, run.exception

    def test_an_unknown_key_is_reported_as_file_line_key(self, tmp_path):
        """A registration with an unknown key: exit 1, one stderr line `<file>:<line>: <key>: ...`."""
        path = write_adapter(
            tmp_path / "adapters",
            {
                "id": "typo-in",
                "name": "Typo",
                "direction": "inbound",
                "transport": "mllp",
                "listen": "127.0.0.1:2999",
                "colour": "blue",
            },
        )
        line = 1 + path.read_text(encoding="utf-8").splitlines().index("colour: blue")
        run = cli("check", "--adapters", str(tmp_path / "adapters"))
        assert run.code == 1, run
        assert len(run.stderr.splitlines()) == 1, run.stderr
        # The program name may lead the line (`passerelle: `), as in `grep: file: ...`.
        pattern = rf"^(?:passerelle: )?{re.escape(str(path))}:{line}: colour: \S"
        assert re.match(pattern, run.stderr), run.stderr

    def test_an_invalid_alert_rules_file_is_reported_as_file_line_key(self, tmp_path):
        """PASSERELLE_ALERTS_FILE with a misspelt rule: exit 1, one line `<file>:2: key: ...`."""
        rules = tmp_path / "alerts.yaml"
        rules.write_text("dead_letters: {}\nlistner_down: null\n")
        env = {"PASSERELLE_ALERTS_FILE": str(rules)}
        run = cli("check", "--adapters", str(REPO_ROOT / "adapters"), env=env)
        assert run.code == 1, run
        assert len(run.stderr.splitlines()) == 1, run.stderr
        pattern = rf"^(?:passerelle: )?{re.escape(str(rules))}:2: listner_down: unknown key"
        assert re.match(pattern, run.stderr), run.stderr
        rules.write_text("listener_down: null\n")
        assert cli("check", "--adapters", str(REPO_ROOT / "adapters"), env=env).code == 0
