"""The pipeline as one pure function: parse → map → route, bad messages become FAILED envelopes."""

from __future__ import annotations

import pytest

from broker.adapters.spec import load_adapters
from broker.envelope import Envelope, MessageState
from broker.mapping import MappingSet
from broker.pipeline import process
from broker.settings import REPO_ROOT
from passerelle_demo.synthetic import adt, oru_r01, patients


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    return MappingSet.load(REPO_ROOT / "mappings")


@pytest.fixture(scope="module")
def adapters():
    specs = load_adapters(REPO_ROOT / "adapters")
    return {s.id: s for s in specs}, [s for s in specs if s.direction == "outbound"]


def run(raw: str | bytes, mappings, adapters):
    by_id, subscribers = adapters
    raw = raw.encode() if isinstance(raw, str) else raw
    return process(Envelope(source="chu-rabat-adt"), raw, mappings, by_id, subscribers)


class TestProcess:
    def test_adt_goes_to_both_subscribers(self, mappings, adapters):
        """An ADT^A01 is routed to the FHIR server and the legacy lab, with its canonical bundle."""
        envelope, destinations = run(
            adt(patients(1, seed=3)[0], "A01", control_id="P1"), mappings, adapters
        )
        assert envelope.state is MessageState.ROUTED
        assert sorted(d.id for d in destinations) == ["dmp-national", "lab-legacy"]
        assert envelope.bundle["type"] == "message"
        assert envelope.bundle["entry"][0]["resource"]["resourceType"] == "MessageHeader"
        assert (envelope.event, envelope.control_id) == ("ADT^A01", "P1")
        assert envelope.mappings

    def test_oru_goes_to_the_fhir_server_only(self, mappings, adapters):
        """lab-legacy subscribes to ADT^* only."""
        _, destinations = run(
            oru_r01(patients(1, seed=4)[0], control_id="P2", n_obx=3), mappings, adapters
        )
        assert [d.id for d in destinations] == ["dmp-national"]

    def test_an_unreadable_journal_entry_fails_with_its_reason(self, mappings, adapters):
        """Bytes that are not HL7 become a FAILED envelope, not an exception."""
        envelope, destinations = run(b"not hl7", mappings, adapters)
        assert envelope.state is MessageState.FAILED
        assert "MSH" in (envelope.reason or "")
        assert destinations == []

    def test_an_event_nobody_subscribes_to_is_filtered(self, mappings, adapters):
        """A mapped message with no subscriber is FILTERED, kept and delivered to nobody."""
        by_id, _ = adapters
        envelope, destinations = process(
            Envelope(source="chu-rabat-adt"),
            adt(patients(1, seed=5)[0], "A01", control_id="P3").encode(),
            mappings,
            by_id,
            [],
        )
        assert envelope.state is MessageState.FILTERED
        assert destinations == []


class _BrokenMappings(MappingSet):
    """A mapping set whose engine has a bug: every message raises KeyError."""

    def map_hl7v2(self, message, ctx):
        raise KeyError("bug")


def test_a_bug_in_mapping_quarantines_the_message_and_does_not_raise(mappings, adapters):
    """An unexpected exception becomes a FAILED envelope that names the error type, not a crash."""
    broken = _BrokenMappings(list(mappings._inbound_list), list(mappings._outbound_list))
    by_id, subscribers = adapters
    envelope, destinations = process(
        Envelope(source="chu-rabat-adt"),
        adt(patients(1, seed=6)[0], "A01", control_id="P4").encode(),
        broken,
        by_id,
        subscribers,
    )
    assert envelope.state is MessageState.FAILED
    assert "KeyError" in (envelope.reason or "")
    assert destinations == []


def test_a_message_without_a_patient_fails_with_that_reason(mappings, adapters):
    """An ADT without PID is quarantined (no patient to file it under), never delivered."""
    text = adt(patients(1, seed=7)[0], "A01", control_id="P5")
    no_pid = "\r".join(s for s in text.split("\r") if not s.startswith("PID"))
    envelope, destinations = run(no_pid, mappings, adapters)
    assert envelope.state is MessageState.FAILED
    assert "patient" in (envelope.reason or "")
    assert destinations == []


def test_a_journalled_fhir_payload_without_resource_type_fails_with_its_reason(mappings, adapters):
    """FHIR input that is no resource is quarantined with a one-line reason, never routed."""
    from broker.pipeline import envelope_from_journal

    fields = {
        b"id": b"abc",
        b"source": b"dmp-in",
        b"received_at": b"2026-11-28T10:00:00+00:00",
        b"content_type": b"application/fhir+json",
        b"raw": b"{}",
    }
    by_id, subscribers = adapters
    envelope, destinations = process(
        envelope_from_journal("1-0", fields), b"{}", mappings, by_id, subscribers
    )
    assert envelope.state is MessageState.FAILED
    assert envelope.reason == "the JSON is not a FHIR resource: it has no resourceType"
    assert destinations == []
