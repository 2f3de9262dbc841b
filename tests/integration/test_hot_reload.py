"""Hot reload on the real stack: changed mappings serve within seconds; a broken file is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa

from broker import keys
from broker.ack import read_ack
from broker.adapters.mllp import MllpClient
from broker.settings import REPO_ROOT
from broker.store.schema import messages
from broker.testing import stored_envelope_json, wait_until
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.synthetic import adt, patients

pytestmark = pytest.mark.integration
RELOAD_BOUND_S = 5


def send(stack: LoopbackStack, text: str) -> str:
    with MllpClient("127.0.0.1", stack.inbound_port, timeout=10) as client:
        return read_ack(client.send(text.encode())).code


def mapping_hash(stack: LoopbackStack, control_id: str) -> str:
    """The hl7v2-adt mapping's hash a message was mapped with (Redis, else the store's row)."""
    found = []
    for key in stack.redis.scan_iter(keys.envelope("*")):
        envelope_id = key.decode().removeprefix(keys.envelope(""))
        envelope = json.loads(stored_envelope_json(stack.redis, envelope_id) or b"{}")
        if envelope.get("control_id") == control_id:
            found = envelope["mappings"]
    if not found and stack.store is not None:
        query = sa.select(messages.c.mappings).where(messages.c.control_id == control_id)
        with stack.store.connect() as connection:
            found = json.loads(connection.execute(query).scalar() or "[]")
    return {m["id"]: m["sha256"] for m in found}.get("hl7v2-adt", "")


def test_changed_mappings_serve_within_seconds_and_broken_ones_are_refused(tmp_path):
    """An edit is used within 5 s by listener and workers; a file failing lint keeps the old one."""
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO_ROOT / "mappings", mappings)
    adt_file = mappings / "hl7v2" / "adt.yaml"
    with LoopbackStack(
        tmp_path / "stack", workers=2, rekick_interval_s=1.0, mappings_dir=mappings
    ) as stack:
        pool = patients(4, seed=1401)
        assert send(stack, adt(pool[0], "A04", control_id="HR-1")) == "AA"
        assert wait_until(lambda: mapping_hash(stack, "HR-1"), 30), stack.logs()
        before = mapping_hash(stack, "HR-1")

        original = adt_file.read_text(encoding="utf-8")
        adt_file.write_text(original.replace("description:", "descripton:", 1), encoding="utf-8")
        # A fresh control id per try: a duplicate would get its first ACK back.
        tries = iter(range(1000))
        assert not wait_until(
            lambda: send(stack, adt(pool[1], "A04", control_id=f"HR-2-{next(tries)}")) != "AA",
            RELOAD_BOUND_S,
            1.0,
        )
        assert "mappings.rejected" in stack.logs(tail=200_000)

        assert original.count(" ADT^A04,") == 1  # once, in source.events
        adt_file.write_text(original.replace(" ADT^A04,", "", 1), encoding="utf-8")
        assert wait_until(
            lambda: send(stack, adt(pool[2], "A04", control_id=f"HR-3-{next(tries)}")) == "AR",
            RELOAD_BOUND_S + 1,
            0.5,
        )

        # Each process looks at the files on its own (the workers on use, at most once a
        # second): the listener answering AR does not mean the worker that maps the next
        # message has looked already. Within the bound, a message is mapped by the new set.
        def mapped_by_new_set() -> bool:
            control_id = f"HR-4-{next(tries)}"
            assert send(stack, adt(pool[3], "A08", control_id=control_id)) == "AA"
            assert wait_until(lambda: mapping_hash(stack, control_id), 30), stack.logs()
            return mapping_hash(stack, control_id) != before

        assert wait_until(mapped_by_new_set, RELOAD_BOUND_S, 0.5)
        assert stack.redis.xlen(keys.REJECTED) >= 1
