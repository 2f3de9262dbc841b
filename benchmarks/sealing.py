"""CPU per message of sealing at rest: ``python -m benchmarks.sealing``.

What the message path adds per message with encryption on (``broker.sealing``): the listener
seals the raw message once (journal), the pipeline opens it and seals the envelope with its
canonical Bundle once (``pl:env:ID``), the delivery drain opens the envelope, the store's writer
opens the envelope and seals the canonical column (the raw is copied sealed). Timed here on a
synthetic ADT^A01, an ORU^R01 of 2-5 KB and the ADT's real envelope (mapped by the base mappings), per operation
and for that whole per-message sequence, with ``time.process_time`` (CPU, not wall clock).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from broker import sealing
from broker.sealing import KeyRing
from passerelle_demo.synthetic import adt, oru_r01, patients

_ROUNDS = 5
_LOOPS = 2000


def _cpu_us(work: Callable[[], object]) -> float:
    """Median CPU microseconds of one call of ``work`` over ``_ROUNDS`` rounds."""
    rounds = []
    for _ in range(_ROUNDS):
        started = time.process_time()
        for _ in range(_LOOPS):
            work()
        rounds.append((time.process_time() - started) / _LOOPS * 1e6)
    return statistics.median(rounds)


def _envelope_json(raw: bytes) -> bytes:
    """The envelope the pipeline stores for ``raw`` (mapped with the base mappings)."""
    from broker.config import load_config
    from broker.envelope import Envelope
    from broker.pipeline import process
    from broker.settings import Settings

    settings = Settings(data_encryption="off")
    config = load_config(settings)
    received = Envelope(source="chu-rabat-adt")
    envelope, _ = process(received, raw, config.mappings, config.adapters, config.subscribers)
    return envelope.model_dump_json().encode()


def main() -> None:
    """Print CPU µs per seal/open of a raw ADT and its envelope, and per message in all."""
    ring = KeyRing({"bench": os.urandom(32)})
    sealing.install(ring)
    patient = next(p for p in patients(10, seed=3) if p.cin)
    raw = adt(patient, "A01", control_id="BENCH-1").encode()
    try:
        envelope = _envelope_json(raw)
    except Exception as exc:
        print(f"(no mapped envelope: {type(exc).__name__}; using a 4 KB JSON stand-in)")
        envelope = b'{"id":"x","bundle":' + b'"' + b"x" * 4000 + b'"}'
    lab = oru_r01(patient, control_id="BENCH-2", n_obx=12).encode()
    sealed_raw = ring.seal(raw, "e", "raw")
    sealed_env = ring.seal(envelope, "e", "env")
    canonical = envelope.decode()
    rows = {
        f"seal raw ({len(raw)} B)": lambda: ring.seal(raw, "e", "raw"),
        f"open raw ({len(raw)} B)": lambda: ring.open(sealed_raw, "e", "raw"),
        f"seal ORU^R01 ({len(lab)} B)": lambda: ring.seal(lab, "e", "raw"),
        f"seal envelope ({len(envelope)} B)": lambda: ring.seal(envelope, "e", "env"),
        f"open envelope ({len(envelope)} B)": lambda: ring.open(sealed_env, "e", "env"),
        "seal canonical, text form": lambda: sealing.seal_text(canonical, "e", "canonical"),
    }

    def one_message() -> None:
        ring.seal(raw, "e", "raw")  # listener: journal
        ring.open(sealed_raw, "e", "raw")  # pipeline
        ring.seal(envelope, "e", "env")  # pipeline: pl:env
        ring.open(sealed_env, "e", "env")  # delivery drain
        ring.open(sealed_env, "e", "env")  # store writer
        sealing.seal_text(canonical, "e", "canonical")  # store writer: canonical column

    rows["per message (listener + pipeline + delivery + writer)"] = one_message
    width = max(len(name) for name in rows)
    for name, work in rows.items():
        print(f"{name:<{width}}  {_cpu_us(work):7.1f} µs CPU")


if __name__ == "__main__":
    main()
