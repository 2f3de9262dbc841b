"""Per-message cost of mapping (and of full FHIR validation), in one process: `make bench-mapping`.

Measures `MappingSet.map_hl7v2` on an ADT^A01 and an ORU^R01 with 20 OBX, as the workers run it
(load-time checks, per-message required elements), and the same with
`full_validation=True` (every resource through fhir.resources), best of several rounds.
"""

from __future__ import annotations

import statistics
import timeit
from datetime import UTC, datetime

from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import parse
from broker.settings import REPO_ROOT
from passerelle_demo.synthetic import adt, oru_r01, patients


def _per_message_ms(mappings: MappingSet, text: str, number: int) -> tuple[float, float]:
    message = parse(text)
    ctx = MapContext(envelope_id="bench", source="chu-rabat-adt", received_at=datetime.now(UTC))
    mappings.map_hl7v2(message, ctx)
    rounds = [
        t / number * 1000
        for t in timeit.repeat(lambda: mappings.map_hl7v2(message, ctx), number=number, repeat=7)
    ]
    return min(rounds), statistics.median(rounds)


def main() -> None:
    """Print best and median milliseconds per message for each case."""
    patient = patients(1, seed=21)[0]
    cases = {
        "ADT^A01": (adt(patient, "A01", control_id="MB1"), 300),
        "ORU^R01 20 OBX": (oru_r01(patient, control_id="MB2", n_obx=20), 50),
    }
    print(f"{'message':16} {'mode':28} {'best ms':>8} {'median ms':>10}")
    for full in (False, True):
        mappings = MappingSet.load(REPO_ROOT / "mappings", full_validation=full)
        mode = "full fhir.resources validation" if full else "load-time checks (hot path)"
        for name, (text, number) in cases.items():
            best, median = _per_message_ms(mappings, text, number)
            print(f"{name:16} {mode:28} {best:8.3f} {median:10.3f}")


if __name__ == "__main__":
    main()
