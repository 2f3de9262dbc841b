"""A mapping that fails at run time (issue 3, item 5): the message is quarantined (FAILED, never
a crashed worker) with the mapping file, the rule and the source path; logs carry no patient data.

Deliberately failing rules are written into a copy of mappings/ and run through
``broker.pipeline.process``, as a worker does.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.envelope import Envelope, MessageState
from broker.mapping import MappingSet, transforms
from broker.mapping import message as mapping_message
from broker.pipeline import process

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = (ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_v251.hl7").read_bytes()
FAMILY = "EL AMRANI"  # PID-5.1 of that sample: must never reach a reason or a log line


@pytest.fixture(name="root")
def fixture_root(tmp_path: Path) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", root)
    return root


def run(root: Path) -> Envelope:
    mappings = MappingSet.load(root)
    envelope, destinations = process(Envelope(source="hosp-a"), MESSAGE, mappings, {}, [])
    assert destinations == []
    assert envelope.state is MessageState.FAILED
    return envelope


def failing(exc: Exception) -> Any:
    def transform(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return transform


def test_a_failing_function_names_file_rule_and_source_path(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    date = transforms.INBOUND["date"]
    bug = ValueError(f"invalid literal: {FAMILY!r}")
    monkeypatch.setitem(transforms.INBOUND, "date", dataclasses.replace(date, fn=failing(bug)))
    reason = run(root).reason or ""
    assert str(root / "hl7v2" / "adt.yaml") in reason
    assert "rule resources[0].rules[2] (birthDate)" in reason
    assert "PID-7" in reason
    assert FAMILY not in reason


def test_a_built_element_lacking_a_required_part_names_file_and_rule(root: Path) -> None:
    """Patient.link needs `other` (R4, 1..1): a rule giving only its type fails on the message."""
    adt = root / "hl7v2" / "adt.yaml"
    rule = (
        "      - id: partial-link\n"
        "        target: link[]\n"
        "        rules:\n"
        "          - {target: type, value: seealso}\n"
        "          - {target: other.display, from: ZXX-1}\n"
    )
    text = adt.read_text(encoding="utf-8")
    adt.write_text(text.replace("      - target: gender\n", rule + "      - target: gender\n", 1))
    reason = run(root).reason or ""
    assert "link[] lacks its required element other" in reason
    assert f"mapping {adt}" in reason
    assert "rule resources[0].rules[3] (link[])" in reason


@pytest.mark.parametrize("bug", [RuntimeError, ZeroDivisionError, LookupError])
def test_any_bug_in_a_function_names_its_rule(
    root: Path, monkeypatch: pytest.MonkeyPatch, bug: type[Exception]
) -> None:
    """Not only the usual ValueError/KeyError: any exception a function raises is that rule's."""
    date = transforms.INBOUND["date"]
    raised = bug(f"cannot handle {FAMILY!r}")
    monkeypatch.setitem(transforms.INBOUND, "date", dataclasses.replace(date, fn=failing(raised)))
    reason = run(root).reason or ""
    assert "rule resources[0].rules[2] (birthDate)" in reason
    assert bug.__name__ in reason
    assert "PID-7" in reason
    assert FAMILY not in reason


def test_an_unexpected_error_is_logged_without_patient_data(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug outside the rules (here in the canonical check) still costs one message; its log
    line has type and code locations, never the exception's message or a traceback's values."""

    def broken_check(event: str, bundle: dict[str, Any]) -> None:
        raise RuntimeError(f"cannot handle {FAMILY!r}")

    monkeypatch.setattr(mapping_message, "check", broken_check)
    with capture_logs() as logs:
        envelope = run(root)
    assert "RuntimeError" in (envelope.reason or "")
    [event] = [entry for entry in logs if entry["event"] == "pipeline.internal_error"]
    assert event["error"] == "RuntimeError"
    assert any("test_runtime_quarantine.py" in frame for frame in event["at"])
    assert "exc_info" not in event
    assert FAMILY not in repr(logs)
