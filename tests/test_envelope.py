"""``Envelope.from_json``: the envelope ``model_validate_json`` gives, and its errors, faster."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from broker.adapters.spec import load_adapters
from broker.envelope import Envelope, Finding, MappingRef, MessageState
from broker.mapping import MappingSet
from broker.pipeline import process
from broker.settings import REPO_ROOT
from passerelle_demo.synthetic import adt, oru_r01, patients


@pytest.fixture(scope="module")
def stored() -> list[bytes]:
    """The JSON the journal drain stores, of mapped ADT and ORU messages and a FAILED one."""
    mappings = MappingSet.load(REPO_ROOT / "mappings")
    specs = load_adapters(REPO_ROOT / "adapters")
    by_id, subscribers = {s.id: s for s in specs}, [s for s in specs if s.direction == "outbound"]
    patient = patients(1, seed=2201)[0]
    raws = [adt(patient, "A01", control_id="J1"), oru_r01(patient, control_id="J2", n_obx=4)]
    envelopes = [
        process(
            Envelope(source="chu-rabat-adt", partition=2),
            raw.encode(),
            mappings,
            by_id,
            subscribers,
        )[0]
        for raw in raws
    ]
    failed = Envelope(
        source="chu-rabat-adt",
        state=MessageState.FAILED,
        reason="PID-7 is not a date",
        findings=(Finding(code="invalid-date", location="PID-7", message="m", rule="r"),),
        mappings=(MappingRef(id="adt", sha256="0" * 64),),
    )
    return [e.model_dump_json().encode() for e in [*envelopes, failed]]


def test_it_gives_the_envelope_model_validate_json_gives(stored):
    for data in stored:
        loaded, validated = Envelope.from_json(data), Envelope.model_validate_json(data)
        assert loaded == validated
        assert repr(loaded) == repr(validated)
        assert type(loaded.received_at.tzinfo) is type(validated.received_at.tzinfo)
        assert loaded.model_dump_json().encode() == data


def test_an_older_envelope_without_later_fields_loads_with_their_defaults(stored):
    older = json.loads(stored[0])
    for later in ("partition", "unmapped", "edit_of", "edit"):
        del older[later]
    data = json.dumps(older).encode()

    assert Envelope.from_json(data) == Envelope.model_validate_json(data)


@pytest.mark.parametrize(
    "change",
    [
        {"state": "lost"},
        {"received_at": "yesterday"},
        {"findings": [{"code": "x"}]},
        {"surprise": 1},
        {"partition": "two"},
    ],
)
def test_a_wrong_envelope_raises_the_same_validation_errors(stored, change):
    data = json.dumps({**json.loads(stored[0]), **change}).encode()
    with pytest.raises(ValidationError) as loaded:
        Envelope.from_json(data)
    with pytest.raises(ValidationError) as validated:
        Envelope.model_validate_json(data)

    def kinds(exc: ValidationError) -> list[tuple[str, tuple[str | int, ...]]]:
        return [(e["type"], e["loc"]) for e in exc.errors()]

    assert kinds(loaded.value) == kinds(validated.value)


@pytest.mark.parametrize("data", [b"", b"{not json", b"[1, 2]", b"null"])
def test_what_is_not_an_envelope_raises_a_validation_error(data):
    with pytest.raises(ValidationError):
        Envelope.from_json(data)
