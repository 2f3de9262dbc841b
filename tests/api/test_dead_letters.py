"""Tests of the dead-letter and resend routes: list, show, replay, discard, bulk replay, resend."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.api.operations import get_operations
from broker.delivery.dead_letter import DeadLetterStore
from broker.delivery.replay import Operations
from broker.dispatch import QUEUE
from broker.settings import REPO_ROOT, Settings
from broker.store import connect, upgrade
from broker.store.credentials import add_user, create_token
from broker.testing import audit_events, stored_envelope_json

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUB = "dmp-national"
SAMPLE = REPO_ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_v251.hl7"
PATIENT_VALUE = "BE123456"
"""The synthetic sample's national identifier: must never appear in a listing."""


class Recorder:
    """A recording ``enqueue``: the tasks the operations queued."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, list[Any]]] = []

    def __call__(self, name: str, args: list[Any]) -> None:
        self.tasks.append((name, args))


@pytest.fixture(name="settings")
def fixture_settings(redis_url: str, dead_letter_adapters: Path) -> Settings:
    return Settings(
        redis_url=redis_url, api_token=SecretStr(TOKEN), adapters_dir=dead_letter_adapters
    )


@pytest.fixture(name="recorder")
def fixture_recorder() -> Recorder:
    return Recorder()


@pytest.fixture(name="app")
def fixture_app(settings: Settings, redis_client: redis.Redis, recorder: Recorder) -> FastAPI:
    app = create_app(settings)
    ops = Operations(redis_client, recorder, subscribers=[SUB], retention_s=3600)
    app.dependency_overrides[get_operations] = lambda: ops
    return app


@pytest.fixture(name="client")
def fixture_client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def add_dead(
    client: redis.Redis,
    envelope: dict[str, Any],
    *,
    subscriber: str = SUB,
    reason: str = "HTTP 422 from the receiver",
    hold: bool = True,
    replies: tuple[Any, ...] = ("HTTP 422: birthDate is in the future",),
    store_envelope: bool = True,
) -> str:
    """Record a dead letter the way the delivery side does, and return its id."""
    raw = json.dumps(envelope).encode()
    if store_envelope:
        client.set(keys.envelope(envelope["id"]), raw)
    attempts = [{"at": time.time(), "error": "refused", "reply": r} for r in replies]
    pipe = client.pipeline()
    dead_id = DeadLetterStore(client).add(
        pipe,
        subscriber=subscriber,
        envelope_id=envelope["id"],
        envelope_json=raw,
        partition=envelope["partition"],
        patient=envelope["partition_key"],
        entry_id="1-0",
        reason=reason,
        attempts=attempts,
        hold=hold,
    )
    pipe.execute()
    return dead_id


def views(written_audit: Any) -> list[dict[str, Any]]:
    """The views of the audit trail, once the store's writer wrote it."""
    return [e for e in written_audit() if e["action"].endswith(".viewed")]


def audit(client: redis.Redis) -> list[dict[str, str]]:
    """The audit events sent (waiting for the store's writer in ``pl:store``)."""
    return audit_events(client)


ROUTES = [
    ("GET", "/api/dead-letters"),
    ("GET", f"/api/dead-letters/{SUB}"),
    ("GET", f"/api/dead-letters/{SUB}/abc"),
    ("POST", f"/api/dead-letters/{SUB}/abc/replay"),
    ("POST", f"/api/dead-letters/{SUB}/abc/discard"),
    ("POST", f"/api/dead-letters/{SUB}/replay"),
    ("POST", "/api/messages/abc/resend"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_the_token(client: TestClient, method: str, path: str) -> None:
    """Without the bearer token every dead-letter and resend route answers 401."""
    reply = client.request(method, path, json={"why": "x", "to": SUB})
    assert reply.status_code == 401
    reply = client.request(
        method, path, json={"why": "x"}, headers={"Authorization": "Bearer wrong"}
    )
    assert reply.status_code == 401


def test_subscribers_are_listed_with_open_counts(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """GET /api/dead-letters lists each subscriber with dead letters, its open and total counts."""
    first = add_dead(redis_client, envelope)
    add_dead(redis_client, envelope, hold=False)
    add_dead(redis_client, envelope, subscriber="lab-legacy", hold=False)
    client.post(
        f"/api/dead-letters/{SUB}/{first}/discard", json={"why": "sent by fax"}, headers=AUTH
    )
    reply = client.get("/api/dead-letters", headers=AUTH)
    assert reply.status_code == 200
    assert reply.json() == [
        {"subscriber": SUB, "open": 1, "total": 2},
        {"subscriber": "lab-legacy", "open": 1, "total": 1},
    ]


def test_listing_holds_no_patient_identifier(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """A listing has summaries only: no patient identifier, no payload."""
    dead_id = add_dead(redis_client, envelope, replies=("AE", {"status": 422, "body": "bad"}))
    reply = client.get(f"/api/dead-letters/{SUB}", headers=AUTH)
    assert reply.status_code == 200
    assert PATIENT_VALUE not in reply.text
    assert "Fatima" not in reply.text
    (item,) = reply.json()
    assert set(item) == {
        "id",
        "subscriber",
        "envelope_id",
        "reason",
        "status",
        "attempts",
        "last_reply",
        "dead_lettered_at",
        "holds_patient",
    }
    assert item["id"] == dead_id
    assert item["envelope_id"] == envelope["id"]
    assert item["attempts"] == 2
    assert item["status"] == "open"
    assert item["holds_patient"] is True
    assert json.loads(item["last_reply"]) == {"status": 422, "body": "bad"}


def test_last_reply_is_truncated(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """A long last reply is cut to 200 characters in the listing."""
    add_dead(redis_client, envelope, replies=("x" * 5000,))
    (item,) = client.get(f"/api/dead-letters/{SUB}", headers=AUTH).json()
    assert len(item["last_reply"]) == 200
    assert item["last_reply"].endswith("…")


def test_listing_filters_by_status_time_and_text(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """status, since, until, text and limit select which dead letters are listed."""
    old = add_dead(redis_client, envelope, reason="timeout", hold=False, replies=("none",))
    time.sleep(0.02)
    cut = time.time()
    new = add_dead(redis_client, envelope, reason="HTTP 422 invalid birthDate", hold=False)
    client.post(f"/api/dead-letters/{SUB}/{old}/discard", json={"why": "dup"}, headers=AUTH)

    def ids(**params: Any) -> list[str]:
        reply = client.get(f"/api/dead-letters/{SUB}", params=params, headers=AUTH)
        assert reply.status_code == 200, reply.text
        return [item["id"] for item in reply.json()]

    assert ids() == [new]
    assert ids(status="all") == [new, old]
    assert ids(status="discarded") == [old]
    assert ids(status="all", text="BIRTHDATE") == [new]
    assert ids(status="all", since=cut) == [new]
    assert ids(status="all", until=cut) == [old]
    assert ids(status="all", limit=1) == [new]
    assert client.get(f"/api/dead-letters/{SUB}?status=lost", headers=AUTH).status_code == 422


def test_listing_an_unknown_subscriber_is_404(client: TestClient) -> None:
    """A subscriber that is neither registered nor has dead letters is a 404."""
    reply = client.get("/api/dead-letters/nobody", headers=AUTH)
    assert reply.status_code == 404
    assert "nobody" in reply.json()["detail"]


REASON = "INC-5120 the DMP refuses the birth date"


def test_showing_one_without_a_reason_withholds_the_content(
    client: TestClient,
    redis_client: redis.Redis,
    envelope: dict[str, Any],
    written_audit: Any,
) -> None:
    """GET one dead letter without a reason: its metadata and attempts, the envelope and the
    patient ``null``, ``content`` saying how to see them; recorded as ``message.viewed``."""
    dead_id = add_dead(redis_client, envelope)
    reply = client.get(f"/api/dead-letters/{SUB}/{dead_id}", headers=AUTH)
    assert reply.status_code == 200
    record = reply.json()
    assert (record["id"], record["status"], len(record["attempts"])) == (dead_id, "open", 1)
    assert (record["envelope"], record["patient"]) == (None, None)
    assert record["control_id"] == envelope["control_id"]
    assert "reason=" in record["content"]
    assert PATIENT_VALUE not in reply.text
    assert envelope["partition_key"] not in reply.text
    (entry,) = views(written_audit)
    assert (entry["action"], entry["actor"], entry["reason"]) == ("message.viewed", "api", "")
    assert entry["targets"] == {
        "dead_letter": dead_id,
        "envelope": envelope["id"],
        "subscriber": SUB,
    }


def test_showing_one_with_a_reason_returns_the_record_and_audits_the_reason(
    client: TestClient,
    redis_client: redis.Redis,
    envelope: dict[str, Any],
    written_audit: Any,
) -> None:
    """GET one dead letter with a reason: the whole record, envelope and patient included;
    recorded as ``content.viewed`` with that reason."""
    dead_id = add_dead(redis_client, envelope)
    reply = client.get(
        f"/api/dead-letters/{SUB}/{dead_id}", params={"reason": REASON}, headers=AUTH
    )
    assert reply.status_code == 200
    record = reply.json()
    assert record["envelope"]["bundle"] == envelope["bundle"]
    assert record["patient"] == envelope["partition_key"]
    assert record["content"] == "shown"
    (entry,) = views(written_audit)
    assert (entry["action"], entry["actor"], entry["reason"]) == ("content.viewed", "api", REASON)
    assert entry["targets"]["dead_letter"] == dead_id


@pytest.mark.parametrize("reason", ["", "   ", ".", "why not"])
def test_showing_one_with_a_reason_that_says_nothing_is_422(
    client: TestClient,
    redis_client: redis.Redis,
    envelope: dict[str, Any],
    written_audit: Any,
    reason: str,
) -> None:
    """A blank or too short reason: 422 with the reason's problem, nothing shown or recorded."""
    dead_id = add_dead(redis_client, envelope)
    reply = client.get(
        f"/api/dead-letters/{SUB}/{dead_id}", params={"reason": reason}, headers=AUTH
    )
    assert reply.status_code == 422
    assert "reason" in reply.json()["detail"]
    assert "Traceback" not in reply.text
    assert PATIENT_VALUE not in reply.text
    assert views(written_audit) == []


@pytest.mark.parametrize("dead_id", ["0123456789abcdef0123456789ab", "a:b", "*"])
def test_showing_an_unknown_dead_letter_is_404(client: TestClient, dead_id: str) -> None:
    """An unknown or malformed dead-letter id is a 404 with a sentence, and nothing is audited."""
    reply = client.get(f"/api/dead-letters/{SUB}/{dead_id}", headers=AUTH)
    assert reply.status_code == 404
    assert reply.json()["detail"].startswith("no dead letter")


def test_replay_of_a_held_patient_releases_it(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], recorder: Recorder
) -> None:
    """Replaying a dead letter holding a patient answers 202 and queues the patient's release."""
    dead_id = add_dead(redis_client, envelope)
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/replay",
        json={"why": "receiver fixed"},
        headers=AUTH,
    )
    assert reply.status_code == 202
    record = reply.json()
    assert record["status"] == "replaying"
    assert record["history"][-1]["who"] == "api"
    assert record["history"][-1]["why"] == "receiver fixed"
    assert recorder.tasks == [("passerelle.release_patient", [SUB, envelope["partition_key"]])]
    assert audit(redis_client)[-1]["action"] == "message.replayed"


def test_replay_without_hold_queues_the_message(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], recorder: Recorder
) -> None:
    """Replaying a dead letter that holds nobody puts it back on the subscriber's stream."""
    dead_id = add_dead(redis_client, envelope, hold=False)
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/replay", json={"why": "retry"}, headers=AUTH
    )
    assert reply.status_code == 202
    entries: list[Any] = redis_client.xrange(keys.outbound(SUB, 3))  # type: ignore[assignment]
    assert [e[1][b"env"].decode() for e in entries] == [envelope["id"]]
    assert recorder.tasks == [("passerelle.drain_outbound", [SUB, 3])]


def test_replaying_twice_is_409(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """A dead letter that is no longer open cannot be replayed or discarded: 409 with why."""
    dead_id = add_dead(redis_client, envelope)
    url = f"/api/dead-letters/{SUB}/{dead_id}"
    assert client.post(f"{url}/replay", json={"why": "a"}, headers=AUTH).status_code == 202
    again = client.post(f"{url}/replay", json={"why": "a"}, headers=AUTH)
    assert again.status_code == 409
    assert "only an open dead letter can be replayed" in again.json()["detail"]
    discard = client.post(f"{url}/discard", json={"why": "a"}, headers=AUTH)
    assert discard.status_code == 409


def test_replay_with_nothing_kept_is_409(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """A dead letter whose payload is gone is refused with 409 and stays open."""
    pipe = redis_client.pipeline()
    dead_id = DeadLetterStore(redis_client).add(
        pipe,
        subscriber=SUB,
        envelope_id=envelope["id"],
        envelope_json=None,
        partition=3,
        patient="",
        entry_id="1-0",
        reason="gone",
        attempts=[],
        hold=False,
    )
    pipe.execute()
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/replay", json={"why": "a"}, headers=AUTH
    )
    assert reply.status_code == 409
    assert "nothing to replay" in reply.json()["detail"]


def _corrected(envelope: dict[str, Any], **patient_changes: Any) -> dict[str, Any]:
    corrected = json.loads(json.dumps(envelope["bundle"]))
    patient = next(e for e in corrected["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["resource"].update(patient_changes)
    return corrected


def test_an_edit_is_a_new_message_linked_to_the_original(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], recorder: Recorder
) -> None:
    """The corrected Bundle becomes a new envelope (new id, ``edit_of`` the original, the diff);
    the original envelope is untouched, the dead letter is ``edited``, the copy is queued."""
    dead_id = add_dead(redis_client, envelope, hold=False)
    original = redis_client.get(keys.envelope(envelope["id"]))
    corrected = _corrected(envelope, birthDate="1962-03-13")
    why = "INC-3301 birth date typo confirmed by the ward"
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/replay",
        json={"why": why, "corrected_bundle": corrected},
        headers=AUTH,
    )
    assert reply.status_code == 202, reply.text
    record = reply.json()
    assert record["status"] == "edited"
    step = record["history"][-1]
    assert step["action"] == "edited"
    new_id = step["edited_to"]
    assert new_id != envelope["id"]
    assert redis_client.get(keys.envelope(envelope["id"])) == original, "the original is kept"
    copy = json.loads(stored_envelope_json(redis_client, new_id) or b"{}")
    assert copy["bundle"] == corrected
    assert copy["edit_of"] == envelope["id"]
    assert [c["path"] for c in copy["edit"]["diff"]] == [
        next(
            f"entry[{i}].resource.birthDate"
            for i, e in enumerate(corrected["entry"])
            if e["resource"]["resourceType"] == "Patient"
        )
    ]
    queued: list[Any] = redis_client.xrange(keys.outbound(SUB, envelope["partition"]))  # type: ignore[assignment]
    assert [e[1][b"env"].decode() for e in queued] == [new_id]
    (event,) = [e for e in audit(redis_client) if e["action"] == "message.edited"]
    assert (event["envelope"], event["dead_letter"], event["why"]) == (envelope["id"], dead_id, why)


@pytest.mark.parametrize("why", [".", "typo", "   fix   "])
def test_an_edit_without_a_real_reason_is_refused(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], why: str
) -> None:
    """An edit's reason must say something: 422, and nothing is queued or changed."""
    dead_id = add_dead(redis_client, envelope, hold=False)
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/replay",
        json={"why": why, "corrected_bundle": _corrected(envelope, birthDate="1962-03-13")},
        headers=AUTH,
    )
    assert reply.status_code == 422
    assert "reason" in reply.text
    assert DeadLetterStore(redis_client).get(SUB, dead_id)["status"] == "open"
    assert not [e for e in audit(redis_client) if e["action"] == "message.edited"]


def test_an_edit_of_the_patients_identifiers_needs_identity_edit(
    settings: Settings,
    redis_client: redis.Redis,
    recorder: Recorder,
    envelope: dict[str, Any],
    tmp_path: Path,
) -> None:
    """An operator (messages.edit, not identity.edit) changing Patient.identifier: 403 naming
    the permission, and the dead letter stays open."""
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    engine = connect(url, create=True)
    upgrade(engine)
    now = time.time()
    add_user(engine, "youssef.amrani", "operator", adapter=None, by="test", now=now)
    made, _ = create_token(engine, "youssef.amrani", by="test", now=now, expires_at=None)
    app = create_app(settings.model_copy(update={"store_url": url}))
    ops = Operations(redis_client, recorder, subscribers=[SUB], retention_s=3600)
    app.dependency_overrides[get_operations] = lambda: ops
    dead_id = add_dead(redis_client, envelope, hold=False)
    forged = _corrected(envelope)
    patient = next(e for e in forged["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["resource"]["identifier"][0]["value"] = "ZZ000001"
    body = {"why": "INC-3302 wrong patient selected", "corrected_bundle": forged}
    with TestClient(app) as client:
        reply = client.post(
            f"/api/dead-letters/{SUB}/{dead_id}/replay",
            json=body,
            headers={"Authorization": f"Bearer {made.token}"},
        )
    engine.dispose()
    assert reply.status_code == 403
    assert "identity.edit" in reply.json()["detail"]
    assert DeadLetterStore(redis_client).get(SUB, dead_id)["status"] == "open"


def test_an_invalid_corrected_bundle_is_422_operation_outcome(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], recorder: Recorder
) -> None:
    """A corrected Bundle that is not valid FHIR R4 gets a 422 OperationOutcome; nothing changes."""
    dead_id = add_dead(redis_client, envelope)
    corrected = json.loads(json.dumps(envelope["bundle"]))
    corrected["type"] = "collection"
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/replay",
        json={"why": "INC-3303 fix the message type", "corrected_bundle": corrected},
        headers=AUTH,
    )
    assert reply.status_code == 422
    assert reply.headers["content-type"].startswith("application/fhir+json")
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["severity"] == "error"
    assert issue["code"] == "invalid"
    assert "Bundle.type" in issue["diagnostics"]
    assert "Traceback" not in reply.text
    assert DeadLetterStore(redis_client).get(SUB, dead_id)["status"] == "open"  # type: ignore[index]
    assert recorder.tasks == []


@pytest.mark.parametrize("body", [{}, {"why": ""}, {"why": "   "}, {"why": "x", "extra": 1}])
def test_replay_needs_a_reason(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], body: dict[str, Any]
) -> None:
    """A replay without a non-empty why (or with unknown fields) is refused with 422."""
    dead_id = add_dead(redis_client, envelope)
    reply = client.post(f"/api/dead-letters/{SUB}/{dead_id}/replay", json=body, headers=AUTH)
    assert reply.status_code == 422
    assert DeadLetterStore(redis_client).get(SUB, dead_id)["status"] == "open"  # type: ignore[index]


def test_replay_for_an_unknown_subscriber_or_id_is_404(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """Replaying or discarding for an unregistered subscriber or an unknown id is a 404."""
    dead_id = add_dead(redis_client, envelope, subscriber="retired-system")
    for action in ("replay", "discard"):
        gone = client.post(
            f"/api/dead-letters/retired-system/{dead_id}/{action}", json={"why": "a"}, headers=AUTH
        )
        assert gone.status_code == 404
        assert "no outbound adapter" in gone.json()["detail"]
        unknown = client.post(
            f"/api/dead-letters/{SUB}/{dead_id}/{action}", json={"why": "a"}, headers=AUTH
        )
        assert unknown.status_code == 404


def test_discard_releases_the_patient(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], recorder: Recorder
) -> None:
    """Discarding answers 200 with the record, audits who and why, and releases the patient."""
    dead_id = add_dead(redis_client, envelope)
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/discard", json={"why": "sent by fax"}, headers=AUTH
    )
    assert reply.status_code == 200
    assert reply.json()["status"] == "discarded"
    assert recorder.tasks == [("passerelle.release_patient", [SUB, envelope["partition_key"]])]
    entry = audit(redis_client)[-1]
    assert (entry["action"], entry["who"], entry["why"]) == (
        "message.discarded",
        "api",
        "sent by fax",
    )


def test_bulk_replay_by_text(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """Bulk replay replays the open dead letters matching the filter and returns their ids."""
    match = add_dead(redis_client, envelope, reason="HTTP 503 maintenance", hold=False)
    other = add_dead(redis_client, envelope, reason="HTTP 422 invalid", hold=False)
    reply = client.post(
        f"/api/dead-letters/{SUB}/replay",
        json={"why": "maintenance over", "text": "maintenance"},
        headers=AUTH,
    )
    assert reply.status_code == 202
    assert reply.json() == {"subscriber": SUB, "replayed": [match], "count": 1, "not_replayed": {}}
    store = DeadLetterStore(redis_client)
    assert store.get(SUB, other)["status"] == "open"  # type: ignore[index]
    assert store.get(SUB, match)["status"] == "replaying"  # type: ignore[index]


def test_bulk_replay_by_time_range(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """Bulk replay with since/until (ISO 8601) replays only the dead letters in that range."""
    add_dead(redis_client, envelope, hold=False)
    time.sleep(0.02)
    cut = time.time()
    late = add_dead(redis_client, envelope, hold=False)
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + f".{int(cut % 1 * 1e6):06d}Z"
    reply = client.post(
        f"/api/dead-letters/{SUB}/replay", json={"why": "ok", "since": since}, headers=AUTH
    )
    assert reply.status_code == 202
    assert reply.json()["replayed"] == [late]


def test_resend_queues_a_stored_message(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], recorder: Recorder
) -> None:
    """POST /api/messages/{id}/resend queues the message for the subscriber and audits it."""
    redis_client.set(keys.envelope(envelope["id"]), json.dumps(envelope))
    reply = client.post(
        f"/api/messages/{envelope['id']}/resend",
        json={"to": SUB, "why": "receiver lost its database"},
        headers=AUTH,
    )
    assert reply.status_code == 202
    assert reply.json() == {"envelope_id": envelope["id"], "to": SUB, "status": "queued"}
    assert recorder.tasks == [("passerelle.drain_outbound", [SUB, 3])]
    entry = audit(redis_client)[-1]
    assert (entry["action"], entry["envelope"], entry["who"]) == (
        "message.resent",
        envelope["id"],
        "api",
    )


def test_resend_errors(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """Resend: unknown subscriber or message 404; a message with no canonical form 409."""
    url = f"/api/messages/{envelope['id']}/resend"
    assert client.post(url, json={"to": SUB, "why": "a"}, headers=AUTH).status_code == 404
    redis_client.set(keys.envelope(envelope["id"]), json.dumps(envelope))
    assert client.post(url, json={"to": "nobody", "why": "a"}, headers=AUTH).status_code == 404
    failed = {**envelope, "bundle": None, "state": "failed", "reason": "no mapping"}
    redis_client.set(keys.envelope(envelope["id"]), json.dumps(failed))
    reply = client.post(url, json={"to": SUB, "why": "a"}, headers=AUTH)
    assert reply.status_code == 409
    assert "no canonical form" in reply.json()["detail"]


def test_default_operations_queue_celery_tasks_in_redis(
    settings: Settings, redis_client: redis.Redis, envelope: dict[str, Any]
) -> None:
    """Without an override, the API queues its Celery task on the broker's Redis queue."""
    dead_id = add_dead(redis_client, envelope)
    with TestClient(create_app(settings)) as client:
        reply = client.post(
            f"/api/dead-letters/{SUB}/{dead_id}/replay", json={"why": "fixed"}, headers=AUTH
        )
    assert reply.status_code == 202
    queued: list[bytes] = redis_client.lrange(QUEUE, 0, -1)  # type: ignore[assignment]
    assert len(queued) == 1
    assert json.loads(queued[0])["headers"]["task"] == "passerelle.release_patient"


def test_a_corrected_bundle_nested_too_deep_is_422_not_500(
    client: TestClient, redis_client: redis.Redis, envelope: dict[str, Any], recorder: Recorder
) -> None:
    """A corrected Bundle nested past what validation can follow is a 422 OperationOutcome (issue 8)."""
    dead_id = add_dead(redis_client, envelope)
    corrected = json.loads(json.dumps(envelope["bundle"]))
    patient = next(e for e in corrected["entry"] if e["resource"]["resourceType"] == "Patient")
    nested: dict[str, Any] = {"url": "urn:x", "valueString": "x"}
    for _ in range(300):
        nested = {"url": "urn:x", "extension": [nested]}
    patient["resource"]["extension"] = [nested]
    reply = client.post(
        f"/api/dead-letters/{SUB}/{dead_id}/replay",
        json={"why": "INC-3304 fix the nesting", "corrected_bundle": corrected},
        headers=AUTH,
    )
    assert reply.status_code == 422
    assert reply.json()["resourceType"] == "OperationOutcome"
    assert "nested too deeply" in reply.json()["issue"][0]["diagnostics"]
    assert DeadLetterStore(redis_client).get(SUB, dead_id)["status"] == "open"  # type: ignore[index]
    assert recorder.tasks == []
