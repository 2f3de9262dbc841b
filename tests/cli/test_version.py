"""``passerelle --version``: the installed distribution's version."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from broker.settings import REPO_ROOT
from broker.testing import run_cli


def test_version_is_the_project_s():
    """The version printed is pyproject.toml's (installed metadata), and nothing else runs."""
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = run_cli("--version")
    assert (done.code, done.stdout, done.stderr) == (0, f"passerelle {declared}\n", "")


def test_the_console_script_prints_it_too():
    """The installed `passerelle` entry point, as an operator runs it."""
    script = REPO_ROOT / ".venv" / "bin" / "passerelle"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "broker"]
    done = subprocess.run([*command, "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("passerelle ")
