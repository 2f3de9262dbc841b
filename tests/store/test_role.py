"""``passerelle store``: the writer as the process ``serve`` supervises, and what it makes of input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from broker import keys
from broker.store import Search, connect, search
from broker.store.records import ack_code, identifier_rows, reply_codes, sniff_msh
from broker.testing import wait_until

REFUSED = (
    b"MSH|^~\\&|HIS|CHU-RABAT|PASSERELLE|MA-DMP|20260101120000||ADT^A01^ADT_A01|R-9|P|2.5.1\r"
    b"PID|1||IPP1^^^CHU-RABAT^PI"
)
ACK = b"MSH|^~\\&|PASSERELLE|MA-DMP|HIS|CHU-RABAT|20260101120000||ACK|A-1|P|2.5.1\rMSA|AR|R-9"


def test_the_writer_role_stores_a_refusal_and_stops_on_sigterm(tmp_path, redis_client, redis_url):
    """Started alone, it creates the SQLite store, writes what waits in pl:rejected, exits 0."""
    redis_client.xadd(
        keys.REJECTED,
        {
            "source": "chu-rabat-adt",
            "raw": REFUSED,
            "peer": "127.0.0.1:5",
            "reason": "no",
            "ack": ACK,
        },
    )
    env = {**os.environ, "PASSERELLE_REDIS_URL": redis_url, "PASSERELLE_DATA_DIR": str(tmp_path)}
    env.pop("PASSERELLE_STORE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "store"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        store = tmp_path / "store.sqlite3"

        def stored() -> list[dict]:
            if not store.exists():
                return []
            engine = connect(f"sqlite:///{store}")
            try:
                return search(engine, Search(state="rejected")).items
            except Exception:
                return []  # the schema is being created
            finally:
                engine.dispose()

        assert wait_until(stored, 30), process.stderr.read1().decode() if process.poll() else ""
        (item,) = stored()
        assert (item["control_id"], item["event"], item["ack_code"]) == ("R-9", "ADT^A01", "AR")
        assert item["peer"] == "127.0.0.1:5"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(REFUSED, ("ADT^A01", "R-9", "2.5.1", "HIS^CHU-RABAT"), id="msh"),
        pytest.param(b"not hl7 at all", (None, None, None, None), id="garbage"),
        pytest.param(b"MSH|^~\\&|A", (None, None, None, None), id="truncated"),
    ],
)
def test_refused_input_is_read_for_its_header_only(raw, expected):
    """MSH-9, MSH-10, MSH-12 and MSH-3^4 of refused input; nothing from what cannot be read."""
    found = sniff_msh(raw)
    assert (found["event"], found["control_id"], found["version"], found["sender"]) == expected


def test_replies_give_their_ack_code_or_http_status():
    """``AA``/``AR …`` are ACK codes, ``HTTP 503: …`` a status; MSA-1 is read from an ACK."""
    assert reply_codes("AA") == ("AA", None)
    assert reply_codes("AR 207 refused") == ("AR", None)
    assert reply_codes("HTTP 503: busy") == (None, 503)
    assert reply_codes("no answer") == (None, None)
    assert ack_code(ACK) == "AR"
    assert ack_code(b"garbage") is None


def test_patient_identifiers_are_kinded_by_their_system():
    """The CIN and IPP systems of broker.identity give the kinds CIN and IPP; others their type."""
    bundle = {
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": "https://passerelle.ma/fhir/sid/cin", "value": "AB12345"},
                        {"system": "https://passerelle.ma/fhir/sid/ipp/CHU", "value": "IPP1"},
                        {"system": "urn:x", "value": "7", "type": {"coding": [{"code": "MR"}]}},
                    ],
                }
            },
            {"resource": {"resourceType": "Encounter", "identifier": [{"value": "V1"}]}},
        ]
    }
    rows = identifier_rows("m", bundle)
    assert [(r["kind"], r["value"]) for r in rows] == [
        ("CIN", "AB12345"),
        ("IPP", "IPP1"),
        ("MR", "7"),
    ]


def test_the_writer_tunes_its_garbage_collector():
    """Set-up objects frozen out of collections, a batch built between two young collections:
    the collector took a quarter of the writer's CPU with Python's defaults. In a child process,
    so this test process keeps its own collector settings."""
    probe = (
        "import gc; from broker.gctuning import GC_THRESHOLD, tune_gc; "
        "default = gc.get_threshold(); tune_gc(); "
        "print(default[0], gc.get_threshold()[0] == GC_THRESHOLD, gc.get_freeze_count() > 0, "
        "gc.get_threshold()[1:] == default[1:])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    default, raised, frozen, rest_kept = result.stdout.split()
    assert int(default) < 50_000
    assert (raised, frozen, rest_kept) == ("True", "True", "True"), result.stdout
