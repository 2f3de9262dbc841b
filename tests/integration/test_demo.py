"""``make demo`` delivers everything it sends ("lost 0", README).

``passerelle demo`` runs as ``make demo`` runs it, in its own process, with the repository's
registrations copied to a temporary directory and moved to free loopback ports (the demo's own
ports may be taken on a shared machine), a small message count and a temporary data directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from broker.settings import REPO_ROOT
from broker.testing import free_port

pytestmark = pytest.mark.integration

COUNT = 10
"""Messages each simulated hospital sends (CHU Rabat's ADT, the Casablanca lab's ORU)."""
EXPECTED = {"dmp-national": 2 * COUNT, "lab-legacy": COUNT}
"""What each subscriber is owed, from adapters/: the DMP takes ADT and ORU, the legacy lab ADT^*."""
DEMO_TIMEOUT_S = 240


def _registrations_on_free_ports(target: Path) -> Path:
    """adapters/ copied to ``target`` with every 127.0.0.1:PORT moved to a free port."""
    target.mkdir()
    for source in sorted((REPO_ROOT / "adapters").glob("*.yaml")):
        text = re.sub(
            r"127\.0\.0\.1:\d+",
            lambda _: f"127.0.0.1:{free_port()}",
            source.read_text(encoding="utf-8"),
        )
        (target / source.name).write_text(text, encoding="utf-8")
    return target


def test_the_demo_delivers_everything_it_sends_and_exits_0(tmp_path: Path) -> None:
    """`passerelle demo --messages 10`: exit 0, and each subscriber's line says it got all, lost 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PASSERELLE_ADAPTERS_DIR"] = str(_registrations_on_free_ports(tmp_path / "adapters"))
    env["PASSERELLE_HTTP_PORT"] = str(free_port())
    data_dir = tmp_path / "demo"
    command = [sys.executable, "-m", "broker", "demo", "--data-dir", str(data_dir)]
    done = subprocess.run(
        [*command, "--messages", str(COUNT)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-3000:]}"
    summary = re.findall(
        r"^([\w-]+): sent (\d+), acknowledged (\d+), delivered (\d+), lost (\d+)$",
        done.stdout,
        flags=re.MULTILINE,
    )
    lines = {sub: tuple(int(n) for n in numbers) for sub, *numbers in summary}
    # (sent, acknowledged, delivered, lost) per subscriber, and the exit status.
    everything = {sub: (owed, owed, owed, 0) for sub, owed in EXPECTED.items()}
    assert (lines, done.returncode) == (everything, 0), report


def test_demo_keep_leaves_a_system_the_ops_commands_find(tmp_path: Path) -> None:
    """`demo --keep`: after its report the system stays up; `passerelle status` finds it with no
    PASSERELLE_ setting (the runtime file) and sees every delivery, the workers and the
    listeners; SIGTERM stops it all and removes the runtime file."""
    import json
    import signal

    from broker import running
    from broker.testing import run_cli, wait_until

    env = {k: v for k, v in os.environ.items() if not k.startswith("PASSERELLE_")}
    env["PASSERELLE_ADAPTERS_DIR"] = str(_registrations_on_free_ports(tmp_path / "adapters"))
    env["PASSERELLE_HTTP_PORT"] = str(free_port())
    out_path = tmp_path / "demo.out"
    command = [
        sys.executable, "-m", "broker", "demo", "--data-dir", str(tmp_path / "demo"),
        "--messages", str(COUNT), "--keep",
    ]  # fmt: skip
    with out_path.open("w") as out:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    try:
        kept = wait_until(
            lambda: "Stop it with" in out_path.read_text() or process.poll() is not None,
            DEMO_TIMEOUT_S,
        )
        assert kept, out_path.read_text()[-3000:]
        assert process.poll() is None, out_path.read_text()[-3000:]
        assert f"kill {process.pid}" in out_path.read_text()
        unset = {k: None for k in os.environ if k.startswith("PASSERELLE_")}
        done = run_cli("status", "--json", env=unset)
        assert done.code == 0, done.stderr
        found = json.loads(done.stdout)
        delivered = {s["id"]: s["delivered"] for s in found["subscribers"]}
        assert delivered == EXPECTED
        assert all(s["listener_up"] for s in found["inbound"]), found["inbound"]
        assert found["processes"]["workers"]["names"], "no worker answered the ping"
        process.send_signal(signal.SIGTERM)
        assert process.wait(90) == 0, out_path.read_text()[-3000:]
        assert not running.runtime_path().exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
