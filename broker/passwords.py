"""People's passwords: the policy they must meet and how one is kept (Argon2id, never the password).

A password is hashed with **Argon2id** (RFC 9106), the ``cryptography`` package's
(``cryptography.hazmat.primitives.kdf.argon2``, OpenSSL 3.2+; the pinned wheel bundles it), so
no new dependency. Memory-hard like scrypt (each guess costs memory as well as time, which is
what graphics cards and custom chips lack), with its time and memory costs set independently,
it is the first choice of RFC 9106 and OWASP today. :data:`CURRENT` holds OWASP's first recommended Argon2id set (19 MiB, 2 passes, one
lane): 25-80 ms a login on a busy 2-core machine (median 40 ms), and little memory per
concurrent login (at most :data:`KDF_SLOTS` at once per process, so a flood of logins cannot
exhaust memory).

The store keeps the standard PHC string, ``$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>``: the
parameters travel with each hash, a 16-byte random salt is drawn for every password, and raising
:data:`CURRENT` later leaves old hashes verifiable; :func:`needs_rehash` says when a hash was made
with other parameters, and the login re-hashes it then (the password is at hand only there).

A password is normalised to Unicode NFKC first (the same password typed on two keyboards or
systems is the same bytes), then must meet :func:`check_policy`: at least :data:`MIN_LENGTH`
characters, at most :data:`MAX_LENGTH`, and not the user's name (nor contain it).
"""

from __future__ import annotations

import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

__all__ = [
    "CURRENT",
    "KDF_SLOTS",
    "MAX_LENGTH",
    "MIN_LENGTH",
    "Parameters",
    "check_policy",
    "hash_password",
    "needs_rehash",
    "parameters_of",
    "verify",
    "verify_nothing",
]

MIN_LENGTH = 12
"""The fewest characters a password may have (NIST SP 800-63B asks 8; a console opens patient
data, and length is what makes a chosen password hard to guess)."""
MAX_LENGTH = 256
"""The most characters: a bound on the work one login asks of the KDF."""
KDF_SLOTS = 4
"""How many passwords one process hashes or verifies at once; further logins wait their turn."""
_SALT_BYTES = 16
_HASH_BYTES = 32
_PHC = re.compile(
    r"^\$argon2id\$v=19\$m=(\d{1,8}),t=(\d{1,4}),p=(\d{1,3})\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{16,}$"
)
_slots = threading.BoundedSemaphore(KDF_SLOTS)


@dataclass(frozen=True, slots=True)
class Parameters:
    """Argon2id's cost parameters (RFC 9106 §3.1).

    Attributes:
        memory_kib: memory per hash, in KiB (``m``).
        iterations: passes over that memory (``t``).
        lanes: degree of parallelism (``p``).
    """

    memory_kib: int
    iterations: int
    lanes: int


CURRENT = Parameters(memory_kib=19_456, iterations=2, lanes=1)
"""The parameters new hashes are made with (OWASP Password Storage Cheat Sheet, Argon2id's first
configuration). Raise them here: every hash made before is re-hashed at its user's next login."""


def _normalised(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def check_policy(name: str, password: str) -> None:
    """Refuse a password a person may not have.

    Raises:
        ValueError: shorter than :data:`MIN_LENGTH` or longer than :data:`MAX_LENGTH`
            characters, or the user's name (or containing it); the message says which, never
            the password.
    """
    chosen = unicodedata.normalize("NFKC", password)
    if len(chosen) < MIN_LENGTH:
        msg = f"a password needs at least {MIN_LENGTH} characters (this one has {len(chosen)})"
        raise ValueError(msg)
    if len(chosen) > MAX_LENGTH:
        msg = f"a password may have at most {MAX_LENGTH} characters (this one has {len(chosen)})"
        raise ValueError(msg)
    folded, login = chosen.casefold(), name.casefold()
    if folded == login or (len(login) >= 4 and login in folded):
        msg = f"a password may not be, or contain, the user's name ({name})"
        raise ValueError(msg)


def hash_password(password: str, parameters: Parameters = CURRENT) -> str:
    """The PHC string of ``password`` under ``parameters``, with a new random salt."""
    kdf = Argon2id(
        salt=secrets.token_bytes(_SALT_BYTES),
        length=_HASH_BYTES,
        iterations=parameters.iterations,
        lanes=parameters.lanes,
        memory_cost=parameters.memory_kib,
    )
    with _slots:
        return kdf.derive_phc_encoded(_normalised(password))


def parameters_of(stored: str) -> Parameters | None:
    """The parameters a stored hash was made with; ``None``: not an Argon2id PHC string."""
    found = _PHC.match(stored)
    if found is None:
        return None
    return Parameters(int(found.group(1)), int(found.group(2)), int(found.group(3)))


def verify(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (compared in constant time by
    the KDF); a malformed stored value matches nothing."""
    if parameters_of(stored) is None:
        verify_nothing(password)
        return False
    try:
        with _slots:
            Argon2id.verify_phc_encoded(_normalised(password), stored)
    except InvalidKey:
        return False
    return True


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` was made with other parameters than :data:`CURRENT`."""
    return parameters_of(stored) != CURRENT


_dummy: list[str] = []
_dummy_lock = threading.Lock()


def verify_nothing(password: str) -> None:
    """Spend the time verifying ``password`` takes, against a hash nobody's password matches:
    a login for an unknown user, or one without a password, then takes as long as a real one,
    and its timing does not tell which names exist."""
    with _dummy_lock:
        if not _dummy:
            _dummy.append(hash_password(secrets.token_urlsafe(32)))
    try:
        with _slots:
            Argon2id.verify_phc_encoded(_normalised(password), _dummy[0])
    except InvalidKey:
        return
