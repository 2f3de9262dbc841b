"""Retention per kind: each store is purged at its own age and not before.

Real Redis and the real drains and writer (EagerBroker) on SQLite and PostgreSQL; the present
is moved with ``now=``, never waited for. Kinds: rejected input and quarantine entries
(``pl:rejected``, ``pl:quarantine``), resolved dead letters (open ones are kept however old),
and the store's messages by state (rejected, failed, the rest), attempts, actions and the audit
trail.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from broker import keys
from broker.audit import load_key, read_anchors
from broker.ops.retention import purge_redis
from broker.store import purge
from broker.store.schema import audit, messages
from broker.store.verify import verify
from passerelle_demo.synthetic import adt, patients

DMP = "dmp-national"
DAY = 86_400
HOLD = {"max_attempts": 1, "initial_delay_s": 60, "max_delay_s": 60, "on_exhausted": "hold"}
AGES = {
    "retention_rejected_s": 10 * DAY,
    "retention_quarantine_s": 20 * DAY,
    "retention_dead_letters_s": 30 * DAY,
    "store_retention_by_state_s": {"rejected": 5 * DAY, "failed": 15 * DAY},
    "store_retention_messages_s": 40 * DAY,
    "store_retention_attempts_s": 50 * DAY,
    "store_retention_actions_s": 60 * DAY,
    "retention_audit_s": 70 * DAY,
}


def _scenario(make_broker, store_url):
    """A delivered message, one failed mapping (quarantine), one refused (rejected), two dead
    letters for the DMP: one discarded (resolved), one left open."""
    broker = make_broker(store_url=store_url, retry=HOLD)
    x, y, z, w = [p for p in patients(30, seed=612) if p.cin][:4]
    broker.receive(adt(x, "A01", control_id="RK-1"))
    no_pid = "\r".join(
        s for s in adt(y, "A01", control_id="RK-2").split("\r") if not s.startswith("PID")
    )
    broker.receive(no_pid)
    broker.receive(b"not hl7")
    broker.run()
    broker.fhir.mode = "reject"
    broker.receive(adt(z, "A01", control_id="RK-3"))
    broker.receive(adt(w, "A01", control_id="RK-4"))
    broker.run()
    broker.fhir.mode = "ok"
    first = broker.dead_letters.find(DMP)[-1]
    broker.operations().discard(DMP, first["id"], who="ops@example.test", why="a duplicate")
    broker.run()
    broker.write_store()
    return broker, broker.settings.model_copy(update=AGES)


def _redis_counts(broker) -> tuple[int, int, int, int]:
    client = broker.client
    return (
        client.xlen(keys.REJECTED),
        client.xlen(keys.QUARANTINE),
        client.hlen(keys.dead_records(DMP)),
        client.xlen(keys.dead(DMP)),
    )


def test_redis_kinds_go_at_their_own_age_and_not_before(make_broker, store_url):
    """Rejected at 10 days, quarantine at 20, the resolved dead letter at 30; the open one and
    its history entry stay at any age."""
    broker, settings = _scenario(make_broker, store_url)
    now = time.time()
    assert _redis_counts(broker) == (1, 1, 2, 2)

    def at(days: float) -> dict[str, int]:
        return purge_redis(broker.client, settings, now=now + days * DAY)

    assert at(9) == {"rejected": 0, "quarantine": 0, "dead_letters": 0}
    assert _redis_counts(broker) == (1, 1, 2, 2)
    assert at(11)["rejected"] == 1
    assert _redis_counts(broker) == (0, 1, 2, 2)
    assert at(19)["quarantine"] == 0
    assert at(21)["quarantine"] == 1
    assert at(29)["dead_letters"] == 0
    assert at(31)["dead_letters"] == 1
    (kept,) = broker.dead_letters.find(DMP, status=None)
    assert kept["status"] == "open"
    assert _redis_counts(broker) == (0, 0, 1, 1)
    assert at(3650)["dead_letters"] == 0, "an open dead letter is never purged"
    assert _redis_counts(broker) == (0, 0, 1, 1)


def test_rejected_input_the_store_has_not_read_is_never_cut(make_broker, store_url):
    """Past its age but not yet stored by the writer: kept (the store would lose it too)."""
    broker, settings = _scenario(make_broker, store_url)
    broker.receive(b"also not hl7")
    assert broker.client.xlen(keys.REJECTED) == 2
    purge_redis(broker.client, settings, now=time.time() + 11 * DAY)
    assert broker.client.xlen(keys.REJECTED) == 1, "the unread entry was cut"
    broker.write_store()
    purge_redis(broker.client, settings, now=time.time() + 11 * DAY)
    assert broker.client.xlen(keys.REJECTED) == 0


def _states(broker) -> list[str]:
    with broker.store.connect() as connection:
        return sorted(connection.scalars(sa.select(messages.c.state)))


def test_store_messages_go_by_state_at_their_own_age(make_broker, store_url):
    """Rejected rows at 5 days, failed at 15, the others at 40; attempts at 50, actions at 60,
    audit entries at 70 (vouched for by a new one)."""
    broker, settings = _scenario(make_broker, store_url)
    now = time.time()
    assert {"failed", "rejected", "routed"} <= set(_states(broker))
    total = len(_states(broker))

    def at(days: float) -> dict[str, int]:
        return purge(broker.store, settings, now=now + days * DAY)

    assert at(4)["messages"] == 0
    assert at(6)["messages"] == 1
    assert "rejected" not in _states(broker)
    assert at(14)["messages"] == 0
    assert at(16)["messages"] == 1
    assert "failed" not in _states(broker)
    assert at(39) == {"messages": 0, "attempts": 0, "actions": 0, "audit": 0}
    assert at(41)["messages"] == total - 2
    assert _states(broker) == []
    assert at(49)["attempts"] == 0
    assert at(51)["attempts"] > 0
    assert at(59)["actions"] == 0
    assert at(61)["actions"] == 1
    with broker.store.connect() as connection:
        chained = connection.scalar(sa.select(sa.func.count()).select_from(audit))
    assert at(69)["audit"] == 0
    assert at(71)["audit"] == chained, "every entry, vouched for by one new entry"
    anchors = read_anchors(broker.client, None)  # Redis's: the head before, pruned too
    assert anchors[0].seq == chained
    assert verify(broker.store, load_key(broker.settings), anchors).ok
