"""Tests of /api/rejected and /api/quarantine: what was kept and why, content only on request."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker import keys
from broker.api import create_app
from broker.settings import Settings
from broker.testing import audit_events

TOKEN = "synthetic-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(name="client")
def fixture_client(redis_client: redis.Redis, redis_url: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, api_token=SecretStr(TOKEN))
    with TestClient(create_app(settings)) as client:
        yield client


def test_rejected_list_has_reasons_but_no_content(
    client: TestClient, redis_client: redis.Redis
) -> None:
    """The list names adapter, peer, reason and size; the bytes only come with one entry, audited."""
    raw = b"MSH|^~\\&|A|B|C|D|2025||ADT^A17|X1|P|2.3\rPID|1||IPP1||EL AMRANI^Fatima"
    entry = redis_client.xadd(
        keys.REJECTED,
        {
            "source": "chu-rabat-adt",
            "raw": raw,
            "reason": "no mapping for ADT^A17 v2.3",
            "peer": "127.0.0.1:5000",
        },
    )
    listed = client.get("/api/rejected", headers=AUTH).json()
    assert listed == [
        {
            "id": entry.decode(),
            "adapter": "chu-rabat-adt",
            "peer": "127.0.0.1:5000",
            "reason": "no mapping for ADT^A17 v2.3",
            "bytes": len(raw),
            "kept_bytes": len(raw),
            "sha256": None,
        }
    ]
    one = client.get(f"/api/rejected/{entry.decode()}", headers=AUTH).json()
    assert one["raw_base64"] is None
    assert "reason=" in one["content"]
    assert one["reason"] == "no mapping for ADT^A17 v2.3"
    assert audit_events(redis_client)[-1]["action"] == "message.viewed"


REASON = "INC-6031 why does the lab's A17 bounce"


def _refused(redis_client: redis.Redis) -> tuple[str, bytes]:
    raw = b"MSH|^~\\&|A|B|C|D|2025||ADT^A17|X2|P|2.3\rPID|1||IPP2||BENNANI^Karim"
    entry = redis_client.xadd(
        keys.REJECTED, {"source": "chu-rabat-adt", "raw": raw, "reason": "no mapping"}
    )
    return entry.decode(), raw


def _views(written_audit) -> list[dict]:
    return [e for e in written_audit() if e["action"].endswith(".viewed")]


def test_a_refused_input_shows_its_bytes_only_with_a_reason(
    client: TestClient, redis_client: redis.Redis, written_audit
) -> None:
    """Without a reason: no bytes, ``message.viewed``; with one: the bytes, ``content.viewed``
    with that reason (read back from the store's audit table)."""
    entry, raw = _refused(redis_client)
    bare = client.get(f"/api/rejected/{entry}", headers=AUTH)
    assert bare.status_code == 200
    assert bare.json()["raw_base64"] is None
    assert "reason=" in bare.json()["content"]
    shown = client.get(f"/api/rejected/{entry}", params={"reason": REASON}, headers=AUTH).json()
    assert base64.b64decode(shown["raw_base64"]) == raw
    assert shown["content"] == "shown"
    viewed = [(e["action"], e["reason"], e["targets"]) for e in _views(written_audit)]
    assert viewed == [
        ("message.viewed", "", {"rejected": entry}),
        ("content.viewed", REASON, {"rejected": entry}),
    ]


@pytest.mark.parametrize("reason", ["", ".", "why not"])
def test_a_reason_that_says_nothing_is_422(
    client: TestClient, redis_client: redis.Redis, written_audit, reason: str
) -> None:
    """Blank or too short: 422 with the reason's problem, no bytes, nothing recorded."""
    entry, _ = _refused(redis_client)
    reply = client.get(f"/api/rejected/{entry}", params={"reason": reason}, headers=AUTH)
    assert reply.status_code == 422
    assert "reason" in reply.json()["detail"]
    assert _views(written_audit) == []


def test_quarantine_lists_failed_messages(client: TestClient, redis_client: redis.Redis) -> None:
    """Quarantined messages are listed with their envelope id and reason."""
    redis_client.xadd(
        keys.QUARANTINE,
        {"envelope": "e1", "source": "chu-rabat-adt", "reason": "ADT^A01 has no patient"},
    )
    assert (
        client.get("/api/quarantine", headers=AUTH).json()[0]["reason"] == "ADT^A01 has no patient"
    )


def test_unknown_rejected_entry_is_404_and_token_required(client: TestClient) -> None:
    """An unknown entry is 404; without a token the lists are refused."""
    assert client.get("/api/rejected/1-0", headers=AUTH).status_code == 404
    assert client.get("/api/quarantine").status_code == 401
