"""Sealing: AES-GCM bodies bound to their record, a key ring, clear errors, plaintext upgrade.

The oracle for "encrypted" is independent of the code under test: the bytes must not contain
the plaintext, and the blob is opened here with ``cryptography``'s AESGCM directly, from the
documented layout (magic, version, key id length, key id, 12-byte nonce, ciphertext+tag).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker import sealing
from broker.errors import DataKeyError, SealedDataError
from broker.sealing import KeyRing

OLD = bytes(range(32))
NEW = bytes(range(32, 64))
BODY = b"MSH|^~\\&|HIS|CHU-RABAT|||20260101||ADT^A01|C1|P|2.5\rPID|||AB123456^^^CIN||EL AMRANI^FATIMA\r"


@pytest.fixture
def ring() -> Iterator[KeyRing]:
    """The process's ring for one test (the suite's is put back after)."""
    before = sealing.active()
    keys = KeyRing({"k-new": NEW, "k-old": OLD})
    sealing.install(keys)
    yield keys
    sealing.install(before)


class TestFormat:
    def test_a_sealed_body_is_the_documented_layout_and_opens_with_plain_aesgcm(self, ring):
        """Magic, version 1, key id, a 96-bit nonce, then AES-GCM with the record as AAD."""
        blob = sealing.seal(BODY, "env-1", "raw")
        assert blob[:3] == b"\xffPL"
        assert blob[3] == 1
        size = blob[4]
        assert blob[5 : 5 + size] == b"k-new"
        nonce = blob[5 + size : 5 + size + 12]
        sealed = blob[5 + size + 12 :]
        aad = b"passerelle\x00env-1\x00raw"
        assert AESGCM(NEW).decrypt(nonce, sealed, aad) == BODY
        assert b"EL AMRANI" not in blob
        assert b"AB123456" not in blob

    def test_two_seals_of_one_body_differ(self, ring):
        """A random nonce each time: equal bodies do not give equal bytes at rest."""
        assert sealing.seal(BODY, "e", "raw") != sealing.seal(BODY, "e", "raw")

    def test_round_trip_bytes_and_text(self, ring):
        """What is sealed opens to the same bytes; the text form to the same text."""
        assert sealing.open(sealing.seal(BODY, "e", "raw"), "e", "raw") == BODY
        text = sealing.seal_text('{"resourceType":"Bundle"}', "e", "canonical")
        assert text.startswith("plsealed1:")
        assert "Bundle" not in text
        assert sealing.open_text(text, "e", "canonical") == '{"resourceType":"Bundle"}'


class TestBinding:
    def test_a_body_moved_to_another_record_fails_authentication(self, ring):
        """Sealed for one envelope, read as another's: SealedDataError, not the body."""
        blob = sealing.seal(BODY, "env-1", "raw")
        with pytest.raises(SealedDataError, match="raw of env-2 fails authentication"):
            sealing.open(blob, "env-2", "raw")

    def test_a_body_moved_to_another_field_fails_authentication(self, ring):
        """The raw bytes cannot be read back as the canonical form of the same message."""
        blob = sealing.seal(BODY, "env-1", "raw")
        with pytest.raises(SealedDataError):
            sealing.open(blob, "env-1", "canonical")

    @pytest.mark.parametrize("where", [-1, -20, 20], ids=["tag", "ciphertext", "nonce"])
    def test_a_flipped_byte_is_a_clear_error_not_garbage(self, ring, where):
        """Any altered byte: SealedDataError naming the record and the key, never output."""
        blob = bytearray(sealing.seal(BODY, "env-1", "raw"))
        blob[where] ^= 0x01
        with pytest.raises(SealedDataError, match="env-1 fails authentication with data key k-new"):
            sealing.open(bytes(blob), "env-1", "raw")

    def test_a_truncated_body_is_a_clear_error(self, ring):
        """Cut short: SealedDataError saying truncated."""
        blob = sealing.seal(BODY, "env-1", "raw")
        with pytest.raises(SealedDataError, match="truncated"):
            sealing.open(blob[:20], "env-1", "raw")


class TestKeyRing:
    def test_the_current_key_seals_and_every_key_opens(self, ring):
        """Sealed before a rotation (old key current), read after it (new key current)."""
        old_blob = KeyRing({"k-old": OLD}).seal(BODY, "e", "raw")
        assert sealing.key_id_of(old_blob) == "k-old"
        assert sealing.open(old_blob, "e", "raw") == BODY
        assert sealing.key_id_of(sealing.seal(BODY, "e", "raw")) == "k-new"

    def test_an_unknown_key_is_named(self, ring):
        """Sealed with a key the ring lacks: DataKeyError carrying and naming its id."""
        blob = KeyRing({"k-gone": os.urandom(32)}).seal(BODY, "e", "raw")
        with pytest.raises(DataKeyError, match="sealed with data key k-gone") as caught:
            sealing.open(blob, "e", "raw")
        assert caught.value.key_id == "k-gone"

    def test_a_short_key_is_refused(self):
        """AES-256 only: a 16-byte key is a DataKeyError naming the key."""
        with pytest.raises(DataKeyError, match="k1 is 16 bytes"):
            KeyRing({"k1": b"x" * 16})


class TestUpgradeAndOff:
    @pytest.mark.parametrize(
        "clear",
        [BODY, b'{"id":"e"}', b"", b"\x0bMSH|"],
        ids=["hl7", "json", "empty", "framed"],
    )
    def test_bodies_written_before_encryption_read_as_they_are(self, ring, clear):
        """No header: a body from before the upgrade is returned unchanged."""
        assert sealing.open(clear, "e", "raw") == clear
        assert sealing.open_text(clear.decode(), "e", "canonical") == clear.decode()

    def test_off_writes_in_clear_and_still_refuses_to_guess_a_sealed_body(self, ring):
        """Encryption off: seal is the identity; a sealed body needs its key all the same."""
        blob = sealing.seal(BODY, "e", "raw")
        sealing.install(None)
        assert sealing.seal(BODY, "e", "raw") == BODY
        with pytest.raises(DataKeyError, match="encryption is off"):
            sealing.open(blob, "e", "raw")


def test_a_text_form_copy_opens_like_the_text_seal(ring):
    """A sealed blob copied into JSON (a dead letter's envelope) opens as its record's."""
    blob = sealing.seal(b'{"a":1}', "e", "env")
    text = sealing.as_text(blob)
    assert base64.b64decode(text.removeprefix("plsealed1:")) == blob
    assert sealing.open_text(text, "e", "env") == '{"a":1}'
