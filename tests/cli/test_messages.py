"""``passerelle messages search|show|trace``, on a store the writer wrote (SQLite)."""

from __future__ import annotations

import json

import pytest

from broker.store import head_revision
from broker.testing import run_cli


def _env(broker):
    return {"PASSERELLE_DATA_DIR": str(broker.data_dir), "PASSERELLE_STORE_URL": None}


class TestCli:
    def test_search_by_control_id_prints_the_messages_as_json(self, written):
        """The JSON list: id, control_id, adapter, event and one delivery per subscriber."""
        broker, _ = written
        run = run_cli("messages", "search", "--control-id", "CL-1", "--json", env=_env(broker))
        assert run.code == 0, run.stderr
        (item,) = json.loads(run.stdout)
        assert (item["control_id"], item["adapter"], item["event"]) == (
            "CL-1",
            "chu-rabat-adt",
            "ADT^A01",
        )
        assert len(item["id"]) == 28
        assert sorted((d["subscriber"], d["state"]) for d in item["deliveries"]) == [
            ("dmp-national", "delivered"),
            ("lab-legacy", "delivered"),
        ]

    def test_search_by_patient_and_today_in_text(self, written):
        """``--patient CIN --since today`` finds it; the text line names both subscribers."""
        broker, patient = written
        run = run_cli(
            "messages", "search", "--patient", patient.cin, "--since", "today", env=_env(broker)
        )
        assert run.code == 0, run.stderr
        assert "CL-1" in run.stdout
        assert "dmp-national=delivered" in run.stdout

    def test_show_and_trace_name_the_attempts(self, written):
        """``show --json`` has the identifiers; ``trace --json`` each subscriber's attempt."""
        broker, patient = written
        (item,) = json.loads(
            run_cli("messages", "search", "--control-id", "CL-1", "--json", env=_env(broker)).stdout
        )
        shown = json.loads(
            run_cli("messages", "show", item["id"], "--json", env=_env(broker)).stdout
        )
        assert {"kind": "CIN", "value": patient.cin} in [
            {"kind": i["kind"], "value": i["value"]} for i in shown["identifiers"]
        ]
        traced = run_cli("messages", "trace", item["id"], env=_env(broker))
        assert traced.code == 0, traced.stderr
        assert "→ lab-legacy: delivered" in traced.stdout
        assert '"AA"' in traced.stdout

    def test_an_unknown_message_is_exit_1_with_one_line(self, written):
        """No traceback: one line naming the id."""
        broker, _ = written
        run = run_cli("messages", "trace", "0" * 28, env=_env(broker))
        assert run.code == 1
        assert not run.crashed
        assert run.stderr.strip().count("\n") == 0
        assert f"no message {'0' * 28}" in run.stderr

    def test_no_store_yet_is_one_line_not_a_new_file(self, tmp_path):
        """A data directory without a store: exit 1 saying the writer creates it; nothing created."""
        run = run_cli("messages", "search", "--json", env={"PASSERELLE_DATA_DIR": str(tmp_path)})
        assert run.code == 1
        assert "passerelle store" in run.stderr
        assert not (tmp_path / "store.sqlite3").exists()

    def test_a_bad_time_is_a_usage_error(self, written):
        """``--since`` must be a time: exit 2."""
        broker, _ = written
        run = run_cli("messages", "search", "--since", "soon", env=_env(broker))
        assert run.code == 2
        assert "--since" in run.stderr


def test_store_upgrade_then_purge(tmp_path):
    """``store upgrade`` creates the schema and says its revision; ``store purge --json`` counts."""
    env = {"PASSERELLE_DATA_DIR": str(tmp_path), "PASSERELLE_STORE_URL": None}
    run = run_cli("store", "upgrade", env=env)
    assert run.code == 0, run.stderr
    assert f"revision {head_revision()}" in run.stdout
    assert head_revision() != "0001"
    assert (tmp_path / "store.sqlite3").exists()
    purged = run_cli("store", "purge", "--json", env=env)
    assert purged.code == 0, purged.stderr
    assert json.loads(purged.stdout) == {"messages": 0, "attempts": 0, "actions": 0, "audit": 0}
    searched = run_cli("messages", "search", "--json", env=env)
    assert (searched.code, json.loads(searched.stdout)) == (0, [])


def test_store_purge_prunes_the_audit_trail_and_verify_lists_the_prune(make_broker):
    """Three entries told of 5 days ago, kept 2 days: ``store purge`` says 3 audit entries
    went and anchors the ``audit.pruned`` entry (5); ``audit verify`` is intact from entry 4
    and names the prune."""
    import time

    from broker import keys
    from broker.audit import record

    broker = make_broker()
    now = time.time()
    for number in range(3):
        record(
            broker.client, "message.viewed", who="nadia", at=now - 5 * 86_400, envelope=f"e{number}"
        )
    broker.write_store()  # 1-3, then 4: the writer's first start (registrations)
    env = {**_env_redis(broker), "PASSERELLE_RETENTION_AUDIT_S": str(2 * 86_400)}
    run = run_cli("store", "purge", env=env)
    assert run.code == 0, run.stderr
    assert run.stdout.strip().endswith("3 audit entries purged")
    assert int(broker.client.hget(keys.AUDIT_HEAD, "seq")) == 5
    verified = run_cli("audit", "verify", env=_env_redis(broker))
    assert verified.code == 0, verified.stderr
    assert verified.stdout.startswith("intact: 2 entries, from entry 4, head 5")
    assert "entries 1–3 pruned on " in verified.stdout
    assert "by retention (vouched by entry 5)" in verified.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("nonsense", "not a database URL", id="not-a-url"),
        pytest.param(
            "postgresql+psycopg://postgres@127.0.0.1:1/none", "cannot be reached", id="down"
        ),
    ],
)
def test_a_store_that_cannot_be_used_is_one_line(tmp_path, url, says):
    """A bad or unreachable PASSERELLE_STORE_URL: exit 1, one line, no traceback."""
    run = run_cli(
        "messages",
        "search",
        env={"PASSERELLE_DATA_DIR": str(tmp_path), "PASSERELLE_STORE_URL": url},
    )
    assert run.code == 1
    assert not run.crashed
    assert says in run.stderr
    assert run.stderr.strip().count("\n") == 0


def _env_redis(broker):
    return {**_env(broker), "PASSERELLE_REDIS_URL": broker.settings.effective_redis_url}


class TestAudited:
    """``trace`` shows content only with a reason, recorded; ``audit verify|export|show``."""

    def _id(self, broker):
        run = run_cli("messages", "search", "--control-id", "CL-1", "--json", env=_env(broker))
        return json.loads(run.stdout)[0]["id"]

    def test_trace_withholds_the_content_without_a_reason(self, written):
        """No --reason: raw and canonical are null and the output says how to see them."""
        broker, _ = written
        run = run_cli("messages", "trace", self._id(broker), "--json", env=_env_redis(broker))
        assert run.code == 0, run.stderr
        traced = json.loads(run.stdout)
        assert traced["raw"] is None
        assert traced["canonical"] is None
        assert "--reason" in traced["content"]

    def test_trace_with_a_reason_shows_the_content_and_records_the_view(self, written):
        """``--reason``: the raw message, and a ``content.viewed`` entry with the reason."""
        broker, _ = written
        message = self._id(broker)
        why = "INC-7781 the DMP says the patient is missing"
        run = run_cli(
            "messages", "trace", message, "--reason", why, "--json", env=_env_redis(broker)
        )
        assert run.code == 0, run.stderr
        assert json.loads(run.stdout)["raw"].startswith("MSH|")
        broker.write_store()
        shown = run_cli("audit", "show", "--action", "content.viewed", "--json", env=_env(broker))
        assert shown.code == 0, shown.stderr
        (entry,) = json.loads(shown.stdout)
        assert (entry["reason"], entry["targets"]["envelope"]) == (why, message)

    @pytest.mark.parametrize("reason", ["", ".", "why not"])
    def test_a_reason_that_says_nothing_is_exit_2(self, written, reason):
        """Blank or too short: exit 2, one line, no content."""
        broker, _ = written
        run = run_cli("messages", "trace", self._id(broker), "--reason", reason, env=_env(broker))
        assert run.code == 2
        assert "reason" in run.stderr
        assert "MSH|" not in run.stdout

    def test_without_redis_no_content_is_shown(self, written):
        """The view cannot be recorded (Redis unreachable): exit 1, nothing shown."""
        broker, _ = written
        env = {**_env(broker), "PASSERELLE_REDIS_URL": "redis://127.0.0.1:1/0"}
        why = "INC-7782 checking what was sent"
        run = run_cli("messages", "trace", self._id(broker), "--reason", why, env=env)
        assert run.code == 1
        assert "audit trail" in run.stderr
        assert "MSH|" not in run.stdout

    def test_audit_verify_is_exit_0_then_exit_1_naming_the_altered_entry(self, written):
        """Intact: exit 0; after an UPDATE of entry 2: exit 1 naming entry 2 and ``altered``."""
        import sqlalchemy as sa

        broker, _ = written
        run = run_cli("audit", "verify", env=_env_redis(broker))
        assert run.code == 0, run.stderr
        assert run.stdout.startswith("intact: 3 entries")  # registrations, two disclosures
        with broker.store.begin() as connection:
            connection.execute(sa.text("UPDATE audit SET actor = 'x' WHERE seq = 2"))
        run = run_cli("audit", "verify", env=_env_redis(broker))
        assert run.code == 1
        assert "entry 2 (altered)" in run.stderr
        assert not run.crashed

    def test_audit_verify_names_a_deleted_tail(self, written):
        """The last entry deleted: exit 1, ``truncated``, thanks to Redis's anchor."""
        import sqlalchemy as sa

        broker, _ = written
        with broker.store.begin() as connection:
            connection.execute(sa.text("DELETE FROM audit WHERE seq = 3"))
        run = run_cli("audit", "verify", "--json", env=_env_redis(broker))
        assert run.code == 1
        assert json.loads(run.stdout)["problem"] == "truncated"

    def test_audit_export_as_fhir(self, written):
        """A Bundle of AuditEvents, each with the DICOM type and the broker's subtype."""
        from fhir.resources.R4B.bundle import Bundle

        broker, _ = written
        run = run_cli("audit", "export", "--format", "fhir", env=_env(broker))
        assert run.code == 0, run.stderr
        bundle = Bundle.model_validate_json(run.stdout)
        codes = sorted(e.resource.subtype[0].code for e in bundle.entry)
        assert codes == ["message.delivered", "message.delivered", "registrations.changed"]
        assert run_cli("audit", "export", "--format", "xml", env=_env(broker)).code == 2
