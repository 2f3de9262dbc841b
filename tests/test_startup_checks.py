"""Start-up checks: every long-running command refuses a configuration `passerelle check` refuses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NoReturn

import pytest

from broker.errors import AdapterSpecError
from broker.mapping import MappingSet
from broker.mapping.spec import HL7_VERSIONS
from broker.settings import REPO_ROOT, Settings
from broker.testing import CliRun, StubCelery, free_port, run_cli, write_adapter

COMMANDS = ("check", "serve", "listen", "worker", "api")
MAPPINGS = REPO_ROOT / "mappings"


@pytest.fixture(scope="module")
def unwritten() -> str:
    """An HL7 v2 version no outbound mapping of the repository writes (the newest such)."""
    written = MappingSet.load(MAPPINGS).hl7_versions
    return next(v for v in reversed(HL7_VERSIONS) if v not in written)


def _old_lab(directory: Path, version: str) -> tuple[Path, int]:
    """An outbound MLLP subscriber on ``version``; returns its file and the hl7_version line."""
    path = write_adapter(
        directory,
        {
            "id": "lab-old",
            "name": "Lab on an HL7 version no mapping writes",
            "direction": "outbound",
            "transport": "mllp",
            "connect": "127.0.0.1:2999",
            "hl7_version": version,
            "subscribe": {"events": ["ADT^*"]},
        },
    )
    lines = path.read_text(encoding="utf-8").splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if text.startswith("hl7_version:"))
    return path, line


# What each command calls once its configuration is accepted: reaching one is a failed check.
STARTERS = (
    "broker.supervisor.Supervisor",  # serve
    "broker.listen.run_listeners",  # listen
    "broker.worker.celery_app.create_celery",  # worker
    "broker.supervisor.ensure_api_token",  # api, before uvicorn
    "uvicorn.run",
)


class StartedAnyway(AssertionError):
    """A command got past its start-up check and began to start the broker."""


@pytest.fixture(scope="module")
def refused(
    tmp_path_factory: pytest.TempPathFactory, unwritten: str
) -> tuple[Path, int, dict[str, CliRun]]:
    """Each command run once in-process on the bad registration, its starters tripwired."""
    root = tmp_path_factory.mktemp("startup")
    path, line = _old_lab(root / "adapters", unwritten)
    env = {
        "PASSERELLE_ADAPTERS_DIR": str(root / "adapters"),
        "PASSERELLE_MAPPINGS_DIR": str(MAPPINGS),
        "PASSERELLE_DATA_DIR": str(root / "data"),
        # Belt and braces: a starter that escaped the tripwires would fail on these unused ports.
        "PASSERELLE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PASSERELLE_HTTP_PORT": str(free_port()),
    }

    def tripwire(*args: Any, **kwargs: Any) -> NoReturn:
        raise StartedAnyway

    with pytest.MonkeyPatch.context() as patch:
        for starter in STARTERS:
            patch.setattr(starter, tripwire)
        results = {command: run_cli(command, env=env) for command in COMMANDS}
    return path, line, results


@pytest.mark.parametrize("command", COMMANDS)
def test_an_hl7_version_no_mapping_writes_stops_the_command_with_one_line(
    refused: tuple[Path, int, dict[str, CliRun]], unwritten: str, command: str
) -> None:
    """Exit 1 and one stderr line `file:line: hl7_version: reason`, nothing started, as `check`."""
    path, line, results = refused
    run = results[command]
    assert not run.crashed, f"{command} went on to start: {run.exception!r}"
    assert run.code == 1, run.stderr
    stderr = run.stderr
    assert len(stderr.splitlines()) == 1, stderr
    pattern = (
        rf"^(?:passerelle: )?{re.escape(str(path))}:{line}: hl7_version: "
        rf"no outbound mapping writes HL7 v{re.escape(unwritten)}; expected one of "
    )
    assert re.match(pattern, stderr), stderr


def test_a_worker_process_refuses_it_too(tmp_path: Path, unwritten: str) -> None:
    """A worker child restarted after the files changed loads the registrations the same way."""
    from broker.worker import runtime as worker_runtime

    path, line = _old_lab(tmp_path / "adapters", unwritten)
    settings = Settings(
        adapters_dir=tmp_path / "adapters",
        mappings_dir=MAPPINGS,
        data_dir=tmp_path,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in ("_runtime", "_settings", "_celery"):  # given back on leaving
            patch.setattr(worker_runtime, name, None)
        worker_runtime.configure(StubCelery(), settings)  # as the worker's process init does
        with pytest.raises(AdapterSpecError) as raised:
            worker_runtime.runtime()
    assert str(raised.value).startswith(f"{path}:{line}: hl7_version: ")
