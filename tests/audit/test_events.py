"""Events from code without a pipeline (logins, mapping reloads) and what counts as a reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker import access_events
from broker.audit import sink
from broker.audit.reasons import ReasonError, check_reason
from broker.mapping.loader import MappingSet
from broker.mapping.reload import MappingWatcher
from broker.testing import audit_events

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def configured(redis_client):
    """The process's sink on the test's Redis, reset after."""
    sink.configure(redis_client)
    yield redis_client
    sink.configure(None)


def test_an_access_event_is_sent_with_ids_only(configured):
    """``access_events.record``: ``access.KIND``, who, the ids and the reason; no secret field."""
    access_events.record("token_revoked", "admin", token_id="t-42", user="u-7", reason="left")
    (event,) = audit_events(configured)
    assert event == {
        "action": "access.token_revoked",
        "who": "admin",
        "why": "left",
        "token_id": "t-42",
        "user": "u-7",
    }


def test_without_a_configured_client_nothing_is_sent_and_nothing_raises(redis_client):
    """An offline tool or a test: the hook is a no-op, never an exception."""
    sink.configure(None)
    access_events.record("login", "someone")
    assert audit_events(redis_client) == []


def test_a_mapping_reload_and_a_refusal_are_recorded(configured, tmp_path):
    """A changed set served: ``mappings.reloaded`` with the ids; a bad one: ``mappings.rejected``."""
    root = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", root)
    watcher = MappingWatcher(root, MappingSet.load(root), interval_s=0)
    table = next(root.glob("tables/*.csv"))
    table.write_text(table.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    watcher.current()
    assert [e["action"] for e in audit_events(configured)] == ["mappings.reloaded"]
    broken = root / "hl7v2" / "adt.yaml"
    broken.write_text(broken.read_text(encoding="utf-8") + "\nnot: [valid\n", encoding="utf-8")
    watcher.current()
    rejected = audit_events(configured)[-1]
    assert rejected["action"] == "mappings.rejected"
    assert rejected["why"]


@pytest.mark.parametrize(
    ("reason", "ok"),
    [
        ("INC-4521 patient called", True),
        ("  ticket 12345678  ", True),
        ("", False),
        ("   ", False),
        (".", False),
        ("typo", False),
        ("x" * 2001, False),
    ],
)
def test_what_counts_as_a_reason(reason, ok):
    """At least 8 letters or digits, at most 2000 characters; blanks are stripped."""
    if ok:
        assert check_reason(reason) == reason.strip()
    else:
        with pytest.raises(ReasonError):
            check_reason(reason)
