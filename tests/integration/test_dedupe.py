"""Nothing lost, nothing duplicated at the edge (issue 8 items 1 and 2), on the real stack.

Two hospitals send over MLLP: ``chu-rabat-adt`` (the loopback source, with a ``senders:`` list)
and ``chu-casa-adt``, registered beside it. CHU Rabat's FHIR gateway (``chu-rabat-fhir``) posts
over HTTP. What counts is what reached the capture subscribers. All patients are synthetic.

"Delivered once" is checked without waiting for time to pass: after the resend, a later message
for the same patient is sent; one patient's messages reach a subscriber in order, so once that
later one has arrived, any second copy of the resend would have arrived before it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.parsing.hl7v2 import parse
from broker.settings import REPO_ROOT
from broker.testing import free_port, wait_for_port, wait_until, write_adapter
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration

FHIR_ADAPTER = "chu-rabat-fhir"
IPP_LOCAL = "http://chu-rabat.ma/ipp"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackStack]:
    """The loopback stack with a second MLLP hospital and CHU Rabat's FHIR gateway."""
    data_dir = tmp_path_factory.mktemp("dedupe-stack")
    adapters = data_dir / "adapters"
    casa_port = free_port()
    write_adapter(
        adapters,
        {
            "id": "chu-casa-adt",
            "name": "CHU Ibn Rochd Casablanca - ADT",
            "direction": "inbound",
            "transport": "mllp",
            "listen": f"127.0.0.1:{casa_port}",
        },
    )
    registration = (REPO_ROOT / "adapters" / f"{FHIR_ADAPTER}.yaml").read_text(encoding="utf-8")
    (adapters / f"{FHIR_ADAPTER}.yaml").write_text(registration, encoding="utf-8")
    events = {"dmp-national": ["ADT^A01", "ADT^A04", "ADT^A08", "ORU^R01", "Patient"]}
    with LoopbackStack(
        data_dir,
        workers=2,
        events=events,
        inbound={"senders": [{"application": "HIS", "facility": "CHU-RABAT"}]},
        rekick_interval_s=1.0,
        claim_idle_s=10.0,
        delivery_timeout_s=2.0,
    ) as running:
        assert running.settings is not None
        assert wait_for_port("127.0.0.1", casa_port, 30), running.logs()
        assert wait_for_port("127.0.0.1", running.settings.http_port, 30), running.logs()
        running.casa_port = casa_port  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def api(stack: LoopbackStack) -> Iterator[httpx.Client]:
    assert stack.settings is not None
    with stack.api_client() as client:
        yield client


def send(port: int, text: str) -> bytes:
    with MllpClient("127.0.0.1", port, timeout=10) as client:
        return client.send(text.encode("utf-8"))


def at_lab(stack: LoopbackStack, ipp: str) -> list[str]:
    """Control ids of the ADT messages about ``ipp`` that reached the MLLP subscriber, in order."""
    return [m.control_id for m in stack.lab.messages if parse(m.text).get("PID-3.1") == ipp]


class TestTwoHospitalsOneControlId:
    def test_both_messages_are_delivered_and_a_resend_only_once(self, stack: LoopbackStack) -> None:
        """B reuses A's MSH-3/4/10: both delivered; A's resend answered alike, delivered once."""
        rabat, casa = patients(2, seed=8801)
        shared = "SHARED880001"
        # Hospital B's interface engine claims the same MSH-3/MSH-4 as A (a copied template).
        from_casa = adt(casa, "A08", control_id=shared)
        from_rabat = adt(rabat, "A01", control_id=shared)
        casa_ack = read_ack(send(stack.casa_port, from_casa))  # type: ignore[attr-defined]
        first = send(stack.inbound_port, from_rabat)
        assert (casa_ack.code, read_ack(first).code) == ("AA", "AA")

        resent = read_ack(send(stack.inbound_port, from_rabat))
        assert (resent.code, resent.control_id) == ("AA", shared)  # as the first; its own MSH-10
        later = "LATER880001"
        assert read_ack(send(stack.inbound_port, adt(rabat, "A08", control_id=later))).code == (
            "AA"
        )

        assert wait_until(lambda: later in at_lab(stack, rabat.ipp), 60), stack.logs()
        assert wait_until(lambda: shared in at_lab(stack, casa.ipp), 60), stack.logs()
        assert at_lab(stack, rabat.ipp) == [shared, later]
        assert at_lab(stack, casa.ipp) == [shared]

        def fhir_patients() -> list[str]:
            return [
                ident["value"]
                for bundle in stack.fhir.received
                for entry in bundle["entry"]
                if entry["resource"]["resourceType"] == "Patient"
                for ident in entry["resource"].get("identifier", [])
                if ident.get("value") in {rabat.ipp, casa.ipp}
            ]

        assert wait_until(lambda: len(fhir_patients()) >= 3, 60), stack.logs()
        assert sorted(fhir_patients()) == sorted([rabat.ipp, rabat.ipp, casa.ipp])

    def test_a_sender_not_in_senders_gets_ar_and_is_kept(
        self, stack: LoopbackStack, api: httpx.Client
    ) -> None:
        """chu-rabat-adt accepts HIS at CHU-RABAT only: CHU-CASA's frame there is AR, kept."""
        patient = patients(1, seed=8802)[0]
        text = adt(patient, "A01", control_id="WRONG880001", sending_facility="CHU-CASA")
        before = stack.redis.xlen(keys.REJECTED)
        ack = read_ack(send(stack.inbound_port, text))
        assert ack.code == "AR"
        assert "'CHU-CASA'" in ack.text
        assert "senders" in ack.text
        assert stack.redis.xlen(keys.REJECTED) == before + 1
        kept = api.get("/api/rejected", params={"limit": 1}).json()[0]
        assert kept["adapter"] == "chu-rabat-adt"
        assert kept["reason"] == ack.text
        assert kept["bytes"] == len(text.encode())
        # Never journalled: the sentinel for this patient arrives alone.
        sentinel = adt(patient, "A08", control_id="RIGHT880001")
        assert read_ack(send(stack.inbound_port, sentinel)).code == "AA"
        assert wait_until(lambda: "RIGHT880001" in at_lab(stack, patient.ipp), 60), stack.logs()
        assert at_lab(stack, patient.ipp) == ["RIGHT880001"]


def post_fhir(api: httpx.Client, resource: dict[str, Any]) -> httpx.Response:
    headers = {"Content-Type": "application/fhir+json"}
    return api.post(f"/inbound/{FHIR_ADAPTER}/fhir", content=json.dumps(resource), headers=headers)


def envelope_of(reply: httpx.Response) -> str:
    found = re.search(r"\(envelope ([A-Za-z0-9_-]+)\)", reply.json()["issue"][0]["diagnostics"])
    assert found, reply.text
    return found.group(1)


def patient_version(city: str, version: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "pat-42",
        "meta": {"versionId": version},
        "identifier": [{"system": IPP_LOCAL, "value": "IPP0088042"}],
        "name": [
            {"family": "BENNANI", "given": ["Youssef"]},
            {"family": "بناني", "given": ["يوسف"]},
        ],
        "gender": "male",
        "birthDate": "1979-06-14",
        "address": [{"city": city, "country": "MA"}],
    }


class TestFhirVersions:
    def test_each_version_is_delivered_in_order_and_a_repost_once(
        self, stack: LoopbackStack, api: httpx.Client
    ) -> None:
        """Patient/pat-42 in Rabat, then in Fes: both delivered in order; a re-post is not."""
        rabat = post_fhir(api, patient_version("Rabat", "1"))
        fes = post_fhir(api, patient_version("Fes", "2"))
        again = post_fhir(api, patient_version("Fes", "2"))
        assert [r.status_code for r in (rabat, fes, again)] == [202, 202, 202]
        assert envelope_of(rabat) != envelope_of(fes)
        assert again.content == fes.content  # the first answer, with the first envelope id
        # A later version for the same patient: once it arrived, a second Fes would have too.
        tanger = post_fhir(api, patient_version("Tanger", "3"))
        assert tanger.status_code == 202

        def cities() -> list[str]:
            return [
                entry["resource"]["address"][0]["city"]
                for bundle in stack.fhir.received
                for entry in bundle["entry"]
                if entry["resource"]["resourceType"] == "Patient"
                and any(
                    i.get("value") == "IPP0088042" for i in entry["resource"].get("identifier", [])
                )
            ]

        assert wait_until(lambda: "Tanger" in cities(), 60), stack.logs()
        assert cities() == ["Rabat", "Fes", "Tanger"]
