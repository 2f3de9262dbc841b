"""CPU per message of the data-sharing policy step, in one process: `python -m benchmarks.policy`.

Measures ``broker.policy.disclose`` on the canonical ADT^A01 of the synthetic sample, as the
delivery drain runs it before rendering: with no policy (the subscription check and an empty
consent snapshot: what every subscriber without a policy pays), with a typical policy (remove
``Patient.telecom`` and ``Patient.address.line``, pseudonymise the CIN), and with that policy
plus one consent entry on another patient (the registry is not empty). Then the cost of one
policy path walked over the JSON (removing ``Patient.address.line`` copy on write) against
fhirpathpy merely evaluating it (why paths are walked).
Last, the consent registry's per-batch check (``ConsentLookup``: one GET of its version on a
private Redis, the snapshot cached), which a drain pays once per batch, not per message.
Best and median of 7 rounds, in microseconds of process CPU per message (per batch for the last).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from broker.adapters.spec import AdapterSpec
from broker.envelope import Envelope
from broker.mapping.fhir_in.fhirpath import compile_path
from broker.policy import Consent, ConsentLookup, Consents, disclose
from broker.policy.paths import parse_path
from broker.settings import REPO_ROOT
from broker.testing import PrivateRedis
from broker.translate import translate

_CIN = "https://passerelle.ma/fhir/sid/cin"


def _cpu_us(run: Callable[[], Any], number: int) -> tuple[float, float]:
    rounds = []
    for _ in range(7):
        start = time.process_time()
        for _ in range(number):
            run()
        rounds.append((time.process_time() - start) / number * 1e6)
    return min(rounds), statistics.median(rounds)


def _subscriber(policy: dict[str, Any] | None) -> AdapterSpec:
    data: dict[str, Any] = {
        "id": "research",
        "name": "Research",
        "direction": "outbound",
        "transport": "fhir-rest",
        "url": "http://127.0.0.1:1/fhir",
        "insecure_http": True,
        "subscribe": {"events": ["ADT^*"]},
    }
    if policy is not None:
        data["policy"] = policy
    return AdapterSpec.model_validate(data)


def main() -> None:
    """Print the table."""
    os.environ.setdefault("PASSERELLE_PSEUDONYM_KEY", "bench-key-0123456789abcdef")
    sample = REPO_ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_v251.hl7"
    out = translate(
        sample.read_bytes(),
        to="canonical",
        mappings_dir=REPO_ROOT / "mappings",
        source="chu-rabat-adt",
    )
    envelope = Envelope.model_validate(json.loads(out))
    typical = {
        "purpose": "HRESCH",
        "remove": ["Patient.telecom", "Patient.address.line"],
        "pseudonymise": {"identifiers": [{"system": _CIN, "as": "urn:passerelle:pseudonym:cin"}]},
    }
    empty = Consents([])
    other = Consents([Consent("c1", _CIN, "ZZ999999", None, "block", "r", 0.0, None, "bench", 0.0)])
    cases = [
        ("no policy, no consent", _subscriber(None), empty),
        ("typical policy (remove 2 + CIN)", _subscriber(typical), empty),
        ("typical policy, registry not empty", _subscriber(typical), other),
    ]
    print(f"{'case':40} {'best µs':>9} {'median µs':>10}")
    for name, subscriber, consents in cases:
        best, median = _cpu_us(
            lambda s=subscriber, c=consents: disclose(s, envelope, lambda: c), 2000
        )
        print(f"{name:40} {best:9.1f} {median:10.1f}")
    patient = next(
        e["resource"]
        for e in envelope.bundle["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )
    walked = parse_path("Patient.address.line")
    fhirpath = compile_path("Patient.address.line")
    for name, run in (
        ("path walk (remove Patient.address.line)", lambda: walked.removed(patient)),
        ("fhirpathpy (Patient.address.line)", lambda: fhirpath(patient)),
    ):
        best, median = _cpu_us(run, 2000)
        print(f"{name:40} {best:9.1f} {median:10.1f}")
    with (
        tempfile.TemporaryDirectory() as directory,
        PrivateRedis(Path(directory) / "redis") as server,
    ):
        client = redis.Redis.from_url(server.url)
        url = f"sqlite:///{Path(directory) / 'absent.sqlite3'}"
        ConsentLookup(client, url)()  # the first load; then the cache
        best, median = _cpu_us(lambda: ConsentLookup(client, url)(), 2000)
        print(f"{'consent check, per batch (GET, cached)':40} {best:9.1f} {median:10.1f}")


if __name__ == "__main__":
    main()
