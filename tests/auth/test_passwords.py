"""Passwords: the Argon2id PHC string kept, its verification, parameters that can be raised, the
policy (broker.passwords); no service needed."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from broker.passwords import (
    CURRENT,
    MIN_LENGTH,
    Parameters,
    check_policy,
    hash_password,
    needs_rehash,
    parameters_of,
    verify,
)

PASSWORD = "Couscous du vendredi 7"
WEAK = Parameters(memory_kib=64, iterations=1, lanes=1)
"""Cheap parameters, for the tests that are not about the cost (and as "old" parameters)."""
_PHC = re.compile(
    r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$"
)


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


class TestHash:
    def test_a_hash_is_a_phc_string_of_argon2id_with_the_current_parameters(self) -> None:
        """The stored value names the algorithm, its version and parameters, a 16-byte salt and
        a 32-byte hash: what a later version needs to verify it with the same parameters."""
        stored = hash_password(PASSWORD)
        found = _PHC.match(stored)
        assert found is not None, stored
        assert (int(found[1]), int(found[2]), int(found[3])) == (19_456, 2, 1)
        assert parameters_of(stored) == CURRENT
        assert (len(_b64(found[4])), len(_b64(found[5]))) == (16, 32)
        assert PASSWORD not in stored

    def test_the_hash_is_argon2id_of_the_password_with_its_salt(self) -> None:
        """Recomputed from the string's own salt and parameters with a raw Argon2id derivation
        (not the code under test), the hash is the one stored."""
        stored = hash_password(PASSWORD, WEAK)
        found = _PHC.match(stored)
        assert found is not None
        raw = Argon2id(
            salt=_b64(found[4]), length=32, iterations=1, lanes=1, memory_cost=64
        ).derive(PASSWORD.encode())
        assert raw == _b64(found[5])

    def test_each_hash_has_its_own_salt(self) -> None:
        first, second = hash_password(PASSWORD, WEAK), hash_password(PASSWORD, WEAK)
        assert first != second
        assert first.split("$")[4] != second.split("$")[4]


class TestVerify:
    def test_the_password_verifies_and_another_does_not(self) -> None:
        stored = hash_password(PASSWORD, WEAK)
        assert verify(stored, PASSWORD)
        assert not verify(stored, PASSWORD + " ")
        assert not verify(stored, PASSWORD.lower())
        assert not verify(stored, "")

    @pytest.mark.parametrize(
        "stored",
        ["", "not a hash", "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"],
        ids=["empty", "text", "argon2i"],
    )
    def test_a_malformed_stored_value_matches_nothing(self, stored: str) -> None:
        assert not verify(stored, PASSWORD)
        assert parameters_of(stored) is None

    def test_the_same_text_typed_in_another_unicode_form_verifies(self) -> None:
        """NFKC first: a composed é and e + combining accent are one password."""
        stored = hash_password("Pastilla épicée 2026", WEAK)
        assert verify(stored, "Pastilla e\u0301pice\u0301e 2026")


class TestParameters:
    def test_a_hash_made_with_older_parameters_still_verifies_and_asks_for_a_rehash(
        self,
    ) -> None:
        old = hash_password(PASSWORD, WEAK)
        assert parameters_of(old) == WEAK
        assert verify(old, PASSWORD)
        assert needs_rehash(old)
        assert not needs_rehash(hash_password(PASSWORD))

    def test_the_current_parameters_are_at_least_owasps(self) -> None:
        """OWASP's weakest recommended Argon2id set: 19 MiB, 2 passes (or more memory per pass)."""
        assert CURRENT.memory_kib * CURRENT.iterations >= 19_456 * 2
        assert CURRENT.memory_kib >= 19_456


class TestPolicy:
    @pytest.mark.parametrize(
        ("name", "password", "reason"),
        [
            pytest.param("amina.benali", "a" * (MIN_LENGTH - 1), "at least 12", id="short"),
            pytest.param("amina.benali", "x" * 257, "at most 256", id="long"),
            pytest.param("youssef.alaoui1", "Youssef.Alaoui1", "user's name", id="the-name"),
            pytest.param("amina.benali", "AMINA.BENALI-2026", "user's name", id="contains-it"),
            pytest.param(
                "amina.benali", "e\u0301" * 7, "has 7", id="counted-after-nfkc"
            ),  # 14 code points typed, 7 characters
        ],
    )
    def test_refused_passwords_say_why_never_what(self, name, password, reason) -> None:
        with pytest.raises(ValueError, match=reason) as refused:
            check_policy(name, password)
        assert password not in str(refused.value)

    @pytest.mark.parametrize(
        ("name", "password"),
        [
            ("amina.benali", "a" * MIN_LENGTH),
            ("amina.benali", "Tajine aux olives 2026"),
            ("ali", "ali est parti à Fès"),  # a name of 3 letters may appear in a sentence
        ],
    )
    def test_accepted_passwords(self, name, password) -> None:
        check_policy(name, password)
