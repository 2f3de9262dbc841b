"""The chain's hash and the patient reference keep their format: HMAC-SHA256, hex."""

from __future__ import annotations

import hashlib
import hmac

from broker.audit.chain import GENESIS, canonical, link, seal
from broker.audit.key import patient_ref

KEY = b"k" * 32
ENTRY = {
    "seq": 7,
    "record": "1700000000000-0.3:d",
    "at": 1700000000.123456,
    "actor": "passerelle",
    "action": "message.delivered",
    "targets": '{"envelope":"e1","subscriber":"a"}',
    "reason": "",
    "details": '{"digest":"00"}',
    "prev": "ignored",
    "hash": "ignored",
}


def test_link_is_hmac_sha256_of_prev_newline_canonical_json() -> None:
    expected = hmac.new(KEY, GENESIS.encode() + b"\n" + canonical(ENTRY), hashlib.sha256)
    assert link(KEY, GENESIS, ENTRY) == expected.hexdigest()
    assert seal(KEY, GENESIS, canonical(ENTRY)) == expected.hexdigest()
    assert link(b"o" * 32, GENESIS, ENTRY) != expected.hexdigest()  # a key of its own


def test_canonical_is_the_fields_in_order_as_compact_json() -> None:
    assert canonical(ENTRY) == (
        b'{"seq":7,"record":"1700000000000-0.3:d","at":1700000000.123456,"actor":"passerelle",'
        b'"action":"message.delivered","targets":"{\\"envelope\\":\\"e1\\",\\"subscriber\\":'
        b'\\"a\\"}","reason":"","details":"{\\"digest\\":\\"00\\"}"}'
    )


def test_patient_ref_is_a_keyed_hash_of_the_identity() -> None:
    expected = hmac.new(KEY, b"patient\x00urn:oid:1|123", hashlib.sha256).hexdigest()[:32]
    assert patient_ref(KEY, "urn:oid:1|123") == expected
    assert patient_ref(KEY, "urn:oid:1|124") != expected
    assert patient_ref(b"o" * 32, "urn:oid:1|123") != expected
