"""The ``policy:`` block is checked when the registration loads: file, line and a sentence."""

from __future__ import annotations

import pytest

from broker.adapters.spec import load_adapters
from broker.errors import AdapterSpecError

HEAD = """id: dmp
name: DMP
direction: outbound
transport: fhir-rest
url: https://dmp.example/fhir
subscribe: {events: ["ADT^*"]}
policy:
  purpose: TREAT
"""


def _load(tmp_path, policy: str):
    (tmp_path / "dmp.yaml").write_text(HEAD + policy)
    return load_adapters(tmp_path)


@pytest.mark.parametrize(
    ("policy", "line", "words"),
    [
        ('  remove: ["Patient.telecom("]\n', 9, "not FHIRPath"),
        ('  remove: ["telecom"]\n', 9, "not a policy path"),
        ("  confidentiality: X\n", 9, "unknown confidentiality"),
        ("  mask:\n    - {path: Patient.name}\n", 10, "with"),
        ("  minimum: [Patient.name.given]\n", 9, "top-level elements"),
        ("  nonsense: 1\n", 9, "unknown key"),
    ],
)
def test_a_bad_policy_names_file_line_and_reason(tmp_path, policy, line, words):
    with pytest.raises(AdapterSpecError) as caught:
        _load(tmp_path, policy)
    assert f"dmp.yaml:{line}" in str(caught.value)
    assert words in str(caught.value)


def test_an_unknown_purpose_is_refused(tmp_path):
    (tmp_path / "dmp.yaml").write_text(HEAD.replace("TREAT", "FUN"))
    with pytest.raises(AdapterSpecError, match="unknown purpose of use 'FUN'"):
        load_adapters(tmp_path)


def test_the_key_comes_from_a_file_and_never_shows(tmp_path):
    key = tmp_path / "k"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    policy = (
        f"  pseudonymise:\n    key_file: {key}\n    identifiers:\n"
        "      - {system: 'https://passerelle.ma/fhir/sid/cin', as: 'urn:x:cin'}\n"
    )
    (spec,) = _load(tmp_path, policy)
    assert spec.policy is not None
    assert spec.policy.pseudonymise is not None
    assert spec.policy.pseudonymise.key == b"0123456789abcdef0123456789abcdef"
    assert "0123456789abcdef" not in spec.model_dump_json()
    assert "0123456789abcdef" not in repr(spec)


def test_a_policy_on_an_inbound_adapter_is_refused(tmp_path):
    (tmp_path / "in.yaml").write_text(
        "id: src\nname: S\ndirection: inbound\ntransport: mllp\nlisten: 127.0.0.1:2575\n"
        "policy: {purpose: TREAT}\n"
    )
    with pytest.raises(AdapterSpecError, match="'policy' is for outbound adapters"):
        load_adapters(tmp_path)


def test_a_relative_key_file_is_read_beside_the_registration(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "sp.key").write_text("abcdefghijklmnopqrstuvwxyz")
    policy = (
        "  pseudonymise:\n    key_file: keys/sp.key\n    identifiers:\n"
        "      - {system: 'https://passerelle.ma/fhir/sid/cin', as: 'urn:x:cin'}\n"
    )
    (spec,) = _load(tmp_path, policy)
    assert spec.policy is not None
    assert spec.policy.pseudonymise is not None
    assert spec.policy.pseudonymise.key == b"abcdefghijklmnopqrstuvwxyz"


def test_a_short_key_is_refused_at_its_line(tmp_path):
    (tmp_path / "short.key").write_text("tooshort")
    policy = (
        "  pseudonymise:\n    key_file: short.key\n    identifiers:\n"
        "      - {system: 'https://passerelle.ma/fhir/sid/cin', as: 'urn:x:cin'}\n"
    )
    with pytest.raises(AdapterSpecError, match=r"dmp.yaml:10.*at least 16 bytes"):
        _load(tmp_path, policy)
