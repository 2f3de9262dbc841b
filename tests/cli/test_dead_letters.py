"""Tests of ``passerelle dead-letters ...`` and ``passerelle replay``, run in-process (CliRunner)."""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from broker import keys
from broker.delivery.dead_letter import DeadLetterStore
from broker.dispatch import QUEUE
from broker.settings import REPO_ROOT
from broker.testing import CliRun, audit_events, run_cli, stored_envelope_json

SUB = "dmp-national"
SAMPLE = REPO_ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_v251.hl7"
PATIENT_VALUE = "BE123456"


Env = dict[str, str | None]


@pytest.fixture(name="env")
def fixture_env(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, dead_letter_adapters: Path
) -> Env:
    """The broker's settings for the commands: the test Redis, every other PASSERELLE_ unset."""
    env: Env = {k: None for k in os.environ if k.startswith("PASSERELLE_")}
    env.update(
        PASSERELLE_REDIS_URL=redis_url,
        PASSERELLE_ADAPTERS_DIR=str(dead_letter_adapters),
        PASSERELLE_MAPPINGS_DIR=str(REPO_ROOT / "mappings"),
        PASSERELLE_DATA_DIR=str(tmp_path / "var"),
        PASSERELLE_DATA_KEY=os.environ["PASSERELLE_DATA_KEY"],  # the suite's (tests/conftest.py)
    )
    return env


def run(env: Env, *args: str) -> CliRun:
    """``passerelle ARGS`` in-process with ``env``."""
    return run_cli(*args, env=env)


def add_dead(
    client: redis.Redis,
    envelope: dict[str, Any],
    *,
    reason: str = "HTTP 422 from the receiver",
    hold: bool = True,
) -> str:
    """Record a dead letter the way the delivery side does, and return its id."""
    raw = json.dumps(envelope).encode()
    client.set(keys.envelope(envelope["id"]), raw)
    pipe = client.pipeline()
    dead_id = DeadLetterStore(client).add(
        pipe,
        subscriber=SUB,
        envelope_id=envelope["id"],
        envelope_json=raw,
        partition=envelope["partition"],
        patient=envelope["partition_key"],
        entry_id="1-0",
        reason=reason,
        attempts=[{"at": time.time(), "error": "refused", "reply": "HTTP 422"}],
        hold=hold,
    )
    pipe.execute()
    return dead_id


def record(client: redis.Redis, dead_id: str) -> dict[str, Any]:
    found = DeadLetterStore(client).get(SUB, dead_id)
    assert found is not None
    return found


def queued_tasks(client: redis.Redis) -> list[str]:
    raw: list[bytes] = client.lrange(QUEUE, 0, -1)  # type: ignore[assignment]
    return [json.loads(m)["headers"]["task"] for m in raw]


def audit(client: redis.Redis) -> list[dict[str, str]]:
    """The audit events sent (waiting for the store's writer in ``pl:store``)."""
    return audit_events(client)


def one_error_line(done: CliRun) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not done.crashed, done.exception
    return lines[0]


def test_list_prints_a_table_without_patient_data(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """`list` prints id, time, status and reason per dead letter, and no patient identifier."""
    dead_id = add_dead(redis_client, envelope, reason="HTTP 422 " + "r" * 100)
    done = run(env, "dead-letters", "list", SUB)
    assert done.code == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:2] == ["ID", "DEAD-LETTERED"]
    assert row.startswith(dead_id)
    assert "open" in row
    assert row.endswith("…")
    assert PATIENT_VALUE not in done.stdout


def test_list_json_and_filters(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """`list --json` gives summaries; --status, --text and --since select them."""
    old = add_dead(redis_client, envelope, reason="timeout")
    DeadLetterStore(redis_client).save({**record(redis_client, old), "status": "discarded"})
    new = add_dead(redis_client, envelope, reason="invalid birthDate")
    done = run(env, "dead-letters", "list", SUB, "--json")
    assert done.code == 0, done.stderr
    assert [s["id"] for s in json.loads(done.stdout)] == [new]
    assert PATIENT_VALUE not in done.stdout
    done = run(env, "dead-letters", "list", SUB, "--status", "all", "--text", "TIMEOUT", "--json")
    assert [s["id"] for s in json.loads(done.stdout)] == [old]
    done = run(env, "dead-letters", "list", SUB, "--since", "2999-01-01T00:00", "--json")
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize(
    "args",
    [
        ("dead-letters", "list", SUB, "--status", "lost"),
        ("dead-letters", "list", SUB, "--since", "yesterday"),
        ("dead-letters", "replay", SUB, "abc"),
        ("dead-letters", "discard", SUB, "abc", "--why", "  "),
        ("replay", "abc", "--why", "x"),
    ],
)
def test_usage_errors_exit_2(env: Env, args: tuple[str, ...]) -> None:
    """A bad option value or a missing --why/--to is a usage error: exit 2."""
    done = run(env, *args)
    assert done.code == 2, done.stderr


REASON = "INC-5121 the DMP refuses the birth date"


def views(written_audit: Any) -> list[dict[str, Any]]:
    """The views of the audit trail, once the store's writer wrote it."""
    return [e for e in written_audit() if e["action"].endswith(".viewed")]


def test_show_without_a_reason_prints_no_content_and_says_how(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], written_audit: Any
) -> None:
    """`show` without --reason: the record's metadata as JSON, envelope and patient null and
    `content` naming --reason; recorded as `message.viewed` with who."""
    dead_id = add_dead(redis_client, envelope)
    done = run(env, "dead-letters", "show", SUB, dead_id, "--by", "nadia")
    assert done.code == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["id"], shown["status"]) == (dead_id, "open")
    assert (shown["envelope"], shown["patient"]) == (None, None)
    assert "--reason" in shown["content"]
    assert PATIENT_VALUE not in done.stdout
    (entry,) = views(written_audit)
    assert (entry["action"], entry["actor"], entry["reason"]) == ("message.viewed", "nadia", "")
    assert entry["targets"]["dead_letter"] == dead_id


def test_show_with_a_reason_prints_the_record_and_audits_the_reason(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], written_audit: Any
) -> None:
    """`show --reason`: the full record with its envelope; `content.viewed` with the reason."""
    dead_id = add_dead(redis_client, envelope)
    done = run(env, "dead-letters", "show", SUB, dead_id, "--reason", REASON, "--by", "nadia")
    assert done.code == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["envelope"]["bundle"] == envelope["bundle"]
    assert shown["patient"] == envelope["partition_key"]
    (entry,) = views(written_audit)
    assert (entry["action"], entry["actor"], entry["reason"]) == (
        "content.viewed",
        "nadia",
        REASON,
    )
    assert (entry["targets"]["dead_letter"], entry["targets"]["envelope"]) == (
        dead_id,
        envelope["id"],
    )


@pytest.mark.parametrize("reason", ["", ".", "why not"])
def test_show_with_a_reason_that_says_nothing_is_exit_2(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], written_audit: Any, reason: str
) -> None:
    """Blank or too short: exit 2 with one line naming --reason; nothing shown or recorded."""
    dead_id = add_dead(redis_client, envelope)
    done = run(env, "dead-letters", "show", SUB, dead_id, "--reason", reason)
    assert done.code == 2
    assert "--reason" in one_error_line(done)
    assert done.stdout == ""
    assert views(written_audit) == []


def test_show_unknown_fails_with_one_line(env: Env, redis_client: redis.Redis) -> None:
    """`show` of an unknown dead letter exits 1 with one line on stderr."""
    done = run(env, "dead-letters", "show", SUB, "0123456789abcdef0123456789ab")
    assert done.code == 1
    assert "no dead letter" in one_error_line(done)


def test_replay_queues_the_release_and_records_who_and_why(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """`replay` marks the dead letter replaying, records --by and --why, and queues the task."""
    dead_id = add_dead(redis_client, envelope)
    done = run(env, "dead-letters", "replay", SUB, dead_id, "--why", "fixed", "--by", "nadia")
    assert done.code == 0, done.stderr
    assert dead_id in done.stdout
    after = record(redis_client, dead_id)
    assert after["status"] == "replaying"
    assert (after["history"][-1]["who"], after["history"][-1]["why"]) == ("nadia", "fixed")
    assert queued_tasks(redis_client) == ["passerelle.release_patient"]
    again = run(env, "dead-letters", "replay", SUB, dead_id, "--why", "again")
    assert again.code == 1
    assert "only an open dead letter" in one_error_line(again)


def test_replay_with_a_corrected_fhir_bundle(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], tmp_path: Path
) -> None:
    """`replay --payload bundle.json` takes the corrected Bundle in as a new message."""
    dead_id = add_dead(redis_client, envelope, hold=False)
    corrected = json.loads(json.dumps(envelope["bundle"]))
    patient = next(e for e in corrected["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["resource"]["birthDate"] = "1962-03-13"
    path = tmp_path / "fixed.json"
    path.write_text("\n  " + json.dumps(corrected))
    why = "INC-3305 birth date typo"
    done = run(env, "dead-letters", "replay", SUB, dead_id, "--why", why, "--payload", str(path))
    assert done.code == 0, done.stderr
    step = record(redis_client, dead_id)["history"][-1]
    assert step["action"] == "edited"
    stored = json.loads(stored_envelope_json(redis_client, step["edited_to"]) or b"{}")
    assert stored["bundle"] == corrected
    assert stored["edit_of"] == envelope["id"]
    original = json.loads(redis_client.get(keys.envelope(envelope["id"])) or b"{}")
    assert original["bundle"] == envelope["bundle"], "the original is kept as it was"
    assert queued_tasks(redis_client) == ["passerelle.drain_outbound"]


def test_replay_with_a_corrected_hl7_message(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], tmp_path: Path
) -> None:
    """`replay --payload msg.hl7` maps the corrected HL7 v2 message into the canonical Bundle."""
    dead_id = add_dead(redis_client, envelope, hold=False)
    path = tmp_path / "fixed.hl7"
    path.write_bytes(SAMPLE.read_bytes().replace(b"|19620312|", b"|19620313|"))
    why = "INC-3306 birth date typo"
    done = run(env, "dead-letters", "replay", SUB, dead_id, "--why", why, "--payload", str(path))
    assert done.code == 0, done.stderr
    edited_to = record(redis_client, dead_id)["history"][-1]["edited_to"]
    stored = json.loads(stored_envelope_json(redis_client, edited_to) or b"{}")
    (patient,) = [
        e["resource"]
        for e in stored["bundle"]["entry"]
        if e["resource"]["resourceType"] == "Patient"
    ]
    assert patient["birthDate"] == "1962-03-13"
    # Same source and control id: the same resource ids, so the receiver updates, not duplicates.
    assert [e["fullUrl"] for e in stored["bundle"]["entry"]] == [
        e["fullUrl"] for e in envelope["bundle"]["entry"]
    ]


def test_replay_refuses_a_changed_control_id(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], tmp_path: Path
) -> None:
    """A corrected HL7 message with another MSH-10 is refused (replays must stay idempotent)."""
    dead_id = add_dead(redis_client, envelope)
    path = tmp_path / "fixed.hl7"
    path.write_bytes(SAMPLE.read_bytes().replace(b"|MSG00001|", b"|MSG00002|"))
    done = run(env, "dead-letters", "replay", SUB, dead_id, "--why", "x", "--payload", str(path))
    assert done.code == 1
    assert "MSH-10" in one_error_line(done)
    assert record(redis_client, dead_id)["status"] == "open"


def test_replay_refuses_an_invalid_bundle(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], tmp_path: Path
) -> None:
    """A corrected Bundle that is not valid FHIR R4 exits 1 with one line; nothing changes."""
    dead_id = add_dead(redis_client, envelope)
    path = tmp_path / "fixed.json"
    path.write_text(json.dumps({**envelope["bundle"], "type": "collection"}))
    why = "INC-3307 wrong bundle type"
    done = run(env, "dead-letters", "replay", SUB, dead_id, "--why", why, "--payload", str(path))
    assert done.code == 1
    assert "Bundle.type" in one_error_line(done)
    assert record(redis_client, dead_id)["status"] == "open"
    assert queued_tasks(redis_client) == []


def test_discard_defaults_by_to_the_os_user(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """`discard` marks the dead letter discarded, recorded as done by the OS user."""
    dead_id = add_dead(redis_client, envelope)
    done = run(env, "dead-letters", "discard", SUB, dead_id, "--why", "sent by fax")
    assert done.code == 0, done.stderr
    after = record(redis_client, dead_id)
    assert after["status"] == "discarded"
    assert after["history"][-1]["who"] == getpass.getuser()


def test_replay_all_by_text(env: Env, redis_client: redis.Redis, envelope: dict[str, Any]) -> None:
    """`replay-all --text` replays the matching open dead letters and prints their ids."""
    match = add_dead(redis_client, envelope, reason="HTTP 503 maintenance", hold=False)
    other = add_dead(redis_client, envelope, reason="HTTP 422 invalid", hold=False)
    done = run(env, "dead-letters", "replay-all", SUB, "--why", "over", "--text", "maintenance")
    assert done.code == 0, done.stderr
    assert done.stdout.splitlines()[1:] == [match]
    assert record(redis_client, other)["status"] == "open"


def test_replay_message_to_a_subscriber(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """`passerelle replay ID --to SUB` queues a journalled message again and audits it."""
    redis_client.set(keys.envelope(envelope["id"]), json.dumps(envelope))
    done = run(env, "replay", envelope["id"], "--to", SUB, "--why", "lost", "--by", "nadia")
    assert done.code == 0, done.stderr
    entries: list[Any] = redis_client.xrange(keys.outbound(SUB, 3))  # type: ignore[assignment]
    assert [e[1][b"env"].decode() for e in entries] == [envelope["id"]]
    (fields,) = audit(redis_client)
    assert (fields["action"], fields["who"]) == ("message.resent", "nadia")


def test_replay_of_an_unknown_message_fails_with_one_line(env: Env) -> None:
    """`passerelle replay` of a message the broker does not keep exits 1 with one line."""
    done = run(env, "replay", "0123456789abcdef0123456789ab", "--to", SUB, "--why", "x")
    assert done.code == 1
    assert "no stored message" in one_error_line(done)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("dead-letters", "list", "nobody"), id="list"),
        pytest.param(("dead-letters", "list", "nobody", "--json"), id="list-json"),
        pytest.param(("dead-letters", "show", "nobody", "1-0"), id="show"),
        pytest.param(("dead-letters", "replay", "nobody", "1-0", "--why", "x"), id="replay"),
        pytest.param(("dead-letters", "discard", "nobody", "1-0", "--why", "x"), id="discard"),
        pytest.param(("dead-letters", "replay-all", "nobody", "--why", "x"), id="replay-all"),
        pytest.param(
            ("replay", "0123456789abcdef0123456789ab", "--to", "nobody", "--why", "x"),
            id="replay-message",
        ),
    ],
)
def test_an_unknown_subscriber_is_a_usage_error_naming_the_known_ones(
    env: Env, command: tuple[str, ...]
) -> None:
    """A subscriber no registration names is exit 2 listing the known ones, never an empty
    all-clear (``no open dead letters for nobody``) or an empty JSON list."""
    done = run(env, *command)
    assert done.code == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    line = one_error_line(done)
    assert "no subscriber 'nobody'" in line
    assert "dmp-national" in line


def test_a_removed_subscriber_with_dead_letters_left_can_still_be_listed(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], tmp_path: Path
) -> None:
    """A subscriber whose registration was removed but whose dead letters remain is known."""
    dead_id = add_dead(redis_client, envelope)
    empty = tmp_path / "no-adapters"
    empty.mkdir()
    done = run(
        {**env, "PASSERELLE_ADAPTERS_DIR": str(empty)}, "dead-letters", "list", SUB, "--json"
    )
    assert done.code == 0, done.stderr
    assert [s["id"] for s in json.loads(done.stdout)] == [dead_id]


def test_unreachable_redis_fails_with_one_line(env: Env) -> None:
    """With the broker's Redis down, a command exits 1 with one line saying so."""
    env = {**env, "PASSERELLE_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = run(env, "dead-letters", "list", SUB)
    assert done.code == 1
    assert "cannot reach the broker's Redis" in one_error_line(done)


def test_replay_refuses_a_corrected_hl7_message_the_pipeline_would_quarantine(
    env: Env, redis_client: redis.Redis, envelope: dict[str, Any], tmp_path: Path
) -> None:
    """A correction goes through the pipeline's own map_message: no patient identity, no replay.

    Before map_message, the correction skipped the canonical check and replayed a Bundle the
    pipeline would have quarantined.
    """
    dead_id = add_dead(redis_client, envelope)
    path = tmp_path / "fixed.hl7"
    lines = SAMPLE.read_bytes().split(b"\r")
    pid = next(i for i, line in enumerate(lines) if line.startswith(b"PID|"))
    fields = lines[pid].split(b"|")
    fields[3] = b""
    lines[pid] = b"|".join(fields)
    path.write_bytes(b"\r".join(lines))
    done = run(env, "dead-letters", "replay", SUB, dead_id, "--why", "x", "--payload", str(path))
    assert done.code == 1
    assert "PID-3" in one_error_line(done) or "patient" in one_error_line(done).lower()
    assert record(redis_client, dead_id)["status"] == "open"
    assert queued_tasks(redis_client) == []
