"""``passerelle policy explain`` and ``passerelle consent add|list|revoke`` (CliRunner)."""

from __future__ import annotations

import json
import os

import pytest

from broker.settings import REPO_ROOT
from broker.testing import run_cli

CIN = "https://passerelle.ma/fhir/sid/cin"


@pytest.fixture
def env(written):
    broker, patient = written
    values: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PASSERELLE_")}
    values.update(
        PASSERELLE_REDIS_URL=broker.redis_url,
        PASSERELLE_ADAPTERS_DIR=str(broker.settings.adapters_dir),
        PASSERELLE_MAPPINGS_DIR=str(REPO_ROOT / "mappings"),
        PASSERELLE_DATA_DIR=str(broker.settings.data_dir),
    )
    return values, broker, patient


def test_explain_then_block_then_explain(env):
    values, broker, patient = env
    message = broker.queued("lab-legacy")["CL-1"]
    shown = run_cli("policy", "explain", message, "lab-legacy", env=values)
    assert shown.code == 0, shown.stderr
    result = json.loads(shown.stdout)
    assert result["sent"] is True
    assert result["payload"].startswith("MSH|")
    added = run_cli(
        "consent", "add", "--system", CIN, "--value", patient.cin, "--action", "block",
        "--why", "opposition", "--by", "dpo", "--json", env=values,
    )  # fmt: skip
    assert added.code == 0, added.stderr
    entry = json.loads(added.stdout)
    listed = json.loads(run_cli("consent", "list", "--json", env=values).stdout)
    assert [c["id"] for c in listed] == [entry["id"]]
    result = json.loads(run_cli("policy", "explain", message, "lab-legacy", env=values).stdout)
    assert result["sent"] is False
    assert result["payload"] is None
    assert entry["id"] in result["reason"]
    revoked = run_cli("consent", "revoke", entry["id"], "--by", "dpo", env=values)
    assert revoked.code == 0
    assert json.loads(run_cli("consent", "list", "--json", env=values).stdout) == []


def test_unknown_subscriber_or_message_exits_2(env):
    values, broker, _ = env
    message = broker.queued("lab-legacy")["CL-1"]
    unknown = run_cli("policy", "explain", message, "nobody", env=values)
    assert unknown.code == 2
    assert "no subscriber 'nobody'" in unknown.stderr
    missing = run_cli("policy", "explain", "0" * 28, "lab-legacy", env=values)
    assert missing.code == 2
    assert "no stored message" in missing.stderr


def test_consent_add_refuses_an_unknown_action(env):
    values, _, _ = env
    refused = run_cli(
        "consent", "add", "--system", CIN, "--value", "X1", "--action", "hide", "--why", "w",
        env=values,
    )  # fmt: skip
    assert refused.code == 2
    assert "block or restrict" in refused.stderr
