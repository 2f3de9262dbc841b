"""The audit trail's retention: a prune vouches for what it removes, and nothing else may go.

On SQLite and PostgreSQL, with real Redis and the real writer: events are recorded with the
times they tell (``at``), the writer links them, ``purge`` prunes the old ones. ``verify`` is
the oracle: it must accept exactly what a prune vouched for and name every other gap, whatever
plain SQL (someone with the database's credentials, without the audit key) did to the table.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from broker import keys
from broker.audit import load_key, read_anchors, record
from broker.store import StoreWriter, purge
from broker.store.ledger import Ledger
from broker.store.pruning import vouch
from tests.store.conftest import audit_entries, verify_trail

DAY = 86_400


def _record(broker, ages_in_days, now):
    for number, age in enumerate(ages_in_days):
        record(
            broker.client,
            "message.viewed",
            who="nadia",
            why="INC-1 check",
            at=now - age * DAY,
            envelope=f"env-{number}",
        )


@pytest.fixture
def trail(make_broker, store_url):
    """Seq 1–3 told of 100 days ago, 4–6 of 50 days ago, 7 (the writer's first start: the
    registrations) and 8–9 of now."""
    broker = make_broker(store_url=store_url)
    now = time.time()
    _record(broker, [100, 100, 100, 50, 50, 50], now)
    broker.write_store()
    _record(broker, [0, 0], now)
    broker.write_store()
    entries = audit_entries(broker.store)
    assert [e["seq"] for e in entries] == list(range(1, 10))
    assert entries[6]["action"] == "registrations.changed"
    return broker, now


def _kept(broker, days):
    return broker.settings.model_copy(update={"retention_audit_s": days * DAY})


def _sql(engine, *statements):
    with engine.begin() as connection:
        for statement, params in statements:
            connection.execute(sa.text(statement), params)


def test_a_prune_removes_exactly_the_old_entries_and_vouches_for_them(trail):
    """Kept 60 days: 1–3 go, one ``audit.pruned`` entry (seq 10) names them and the hash of
    3, which entry 4's ``prev`` is; ``verify`` is intact from entry 4 and says so."""
    broker, now = trail
    before = audit_entries(broker.store)
    purged = purge(broker.store, _kept(broker, 60), now=now, batch=2)
    assert purged["audit"] == 3
    after = audit_entries(broker.store)
    assert [e["seq"] for e in after] == [4, 5, 6, 7, 8, 9, 10]
    assert after[:6] == before[3:], "the kept entries are untouched"
    pruned = after[-1]
    assert (pruned["action"], pruned["actor"], pruned["reason"]) == (
        "audit.pruned",
        "passerelle",
        "retention",
    )
    details = json.loads(pruned["details"])
    assert details == {
        "first": 1,
        "last": 3,
        "count": 3,
        "last_hash": before[2]["hash"],
        "before": now - 60 * DAY,
        "retention_s": 60 * DAY,
    }
    assert after[0]["prev"] == before[2]["hash"]
    assert pruned["prev"] == before[-1]["hash"], "linked after the head"
    verdict = verify_trail(broker)
    assert verdict.ok, verdict.reason
    assert (verdict.first_seq, verdict.head_seq, verdict.entries) == (4, 10, 7)
    day = time.strftime("%Y-%m-%d", time.gmtime(now))
    assert verdict.pruned == [f"entries 1–3 pruned on {day} by retention (vouched by entry 10)"]


def test_the_writers_purge_anchors_the_prune_entry(trail):
    """The writer's periodic purge prunes too, and the Redis anchor and the file name the
    ``audit.pruned`` entry; deleting that entry leaves entries 1–3 unvouched for."""
    broker, _ = trail
    writer = StoreWriter(broker.client, broker.store, _kept(broker, 60))
    assert writer.purge()["audit"] == 3
    head = broker.client.hgetall(keys.AUDIT_HEAD)
    assert int(head[b"seq"]) == 10
    (file_anchor,) = [
        a for a in read_anchors(None, broker.settings.data_dir / "audit-anchors") if a.seq == 10
    ]
    assert file_anchor.hash == head[b"hash"].decode()
    assert verify_trail(broker).ok
    _sql(broker.store, ("DELETE FROM audit WHERE seq = 10", {}))
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, 1, "deleted")


def test_deleting_the_oldest_kept_entry_after_a_prune_is_named(trail):
    """Entry 4 (the first kept) deleted: the prune vouches for 1–3 only, so 4 is ``deleted``."""
    broker, now = trail
    purge(broker.store, _kept(broker, 60), now=now)
    _sql(broker.store, ("DELETE FROM audit WHERE seq = 4", {}))
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, 4, "deleted")
    assert "no prune vouches" in verdict.reason


def test_deleting_the_first_entries_of_a_never_pruned_chain_is_named(trail):
    """Entries 1–2 deleted, no prune: ``deleted`` at 1, as before retention existed."""
    broker, _ = trail
    _sql(broker.store, ("DELETE FROM audit WHERE seq <= 2", {}))
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, 1, "deleted")
    assert verdict.reason.startswith("entries 1–2 are missing")


@pytest.mark.parametrize("how", ["appended", "rewritten"])
def test_a_prune_entry_forged_with_plain_sql_is_named(trail, how):
    """Entries 1–3 deleted and an ``audit.pruned`` entry that vouches for them written without
    the key (appended after the head, or an entry rewritten into one): ``altered`` there."""
    broker, now = trail
    entries = audit_entries(broker.store)
    details = json.dumps(
        {"first": 1, "last": 3, "count": 3, "last_hash": entries[2]["hash"], "before": now}
    )
    forged = hashlib.sha256(b"forged").hexdigest()
    if how == "appended":
        seq = 10
        change = (
            "INSERT INTO audit (seq, record, at, actor, action, targets, reason, details, prev,"
            " hash) VALUES (10, 'x', :at, 'passerelle', 'audit.pruned', '{}', 'retention',"
            " :details, :prev, :hash)",
            {"at": now, "details": details, "prev": entries[-1]["hash"], "hash": forged},
        )
    else:
        seq = 8
        change = (
            "UPDATE audit SET action = 'audit.pruned', details = :details WHERE seq = 8",
            {"details": details},
        )
    _sql(broker.store, ("DELETE FROM audit WHERE seq <= 3", {}), change)
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, seq, "altered")


def test_two_successive_prunes_verify(trail):
    """Kept 60 days, then 30: 1–3 (entry 10 vouches) then 4–6 (entry 11); intact from 7, and
    both prunes are listed."""
    broker, now = trail
    assert purge(broker.store, _kept(broker, 60), now=now)["audit"] == 3
    assert purge(broker.store, _kept(broker, 30), now=now)["audit"] == 3
    assert [e["seq"] for e in audit_entries(broker.store)] == [7, 8, 9, 10, 11]
    verdict = verify_trail(broker)
    assert verdict.ok, verdict.reason
    assert verdict.first_seq == 7
    assert [p.split(" pruned")[0] for p in verdict.pruned] == ["entries 1–3", "entries 4–6"]
    _sql(broker.store, ("DELETE FROM audit WHERE seq = 7", {}))
    assert (verify_trail(broker).first_bad, verify_trail(broker).problem) == (7, "deleted")


def test_a_prune_cut_short_is_vouched_for_and_finished_by_the_next(trail):
    """A crash after the ``audit.pruned`` entry committed and entry 1 went: intact from 2 (the
    entry vouches for 1–3); the next purge appends a prune of 2–3 and removes them."""
    broker, now = trail
    ledger = Ledger(load_key(broker.settings))
    with broker.store.begin() as connection:
        vouched = vouch(connection, ledger, cutoff=now - 60 * DAY, now=now, retention_s=60 * DAY)
    assert vouched is not None
    assert (vouched.first, vouched.last, vouched.head[0]) == (1, 3, 10)
    _sql(broker.store, ("DELETE FROM audit WHERE seq = 1", {}))
    verdict = verify_trail(broker)
    assert verdict.ok, verdict.reason
    assert verdict.first_seq == 2
    assert purge(broker.store, _kept(broker, 60), now=now)["audit"] == 2
    verdict = verify_trail(broker)
    assert verdict.ok, verdict.reason
    assert verdict.first_seq == 4
    assert [p.split(" pruned")[0] for p in verdict.pruned] == ["entries 1–3", "entries 2–3"]


def test_a_prune_never_erases_a_tampered_entry(trail):
    """Entry 2 (old enough to go) altered: the prune refuses, everything stays, and ``verify``
    still names entry 2."""
    broker, now = trail
    _sql(broker.store, ("UPDATE audit SET actor = 'someone else' WHERE seq = 2", {}))
    before = audit_entries(broker.store)
    with capture_logs() as logs:
        assert purge(broker.store, _kept(broker, 60), now=now)["audit"] == 0
    (refused,) = [e for e in logs if e["event"] == "audit.prune_refused"]
    assert (refused["seq_first"], refused["seq_last"]) == (1, 3)
    assert refused["reason"] == "entry 2 does not match its hash"
    assert audit_entries(broker.store) == before
    verdict = verify_trail(broker)
    assert (verdict.first_bad, verdict.problem) == (2, "altered")


def test_entries_younger_than_the_retention_are_all_kept(trail):
    """The default retention (ten years): nothing goes, no ``audit.pruned`` entry is appended."""
    broker, now = trail
    before = audit_entries(broker.store)
    assert broker.settings.retention_audit_s == 10 * 365 * DAY
    assert purge(broker.store, broker.settings, now=now)["audit"] == 0
    assert purge(broker.store, _kept(broker, 101), now=now)["audit"] == 0
    assert audit_entries(broker.store) == before
    assert verify_trail(broker).reason == "9 entries intact"


def test_the_writer_appends_after_a_prune_that_holds_the_chain_instead_of_failing(trail):
    """A prune's transaction (``store purge`` in another process) holds the chain's lock: the
    writer's batch waits for it, then links its entries after the ``audit.pruned`` entry."""
    broker, now = trail
    ledger = Ledger(load_key(broker.settings))
    _record(broker, [0, 0], now)
    outcome: list[object] = []
    with broker.store.begin() as connection:
        vouched = vouch(connection, ledger, cutoff=now - 60 * DAY, now=now, retention_s=60 * DAY)
        thread = threading.Thread(target=lambda: outcome.append(_write(broker)))
        thread.start()
        thread.join(1.0)
        assert thread.is_alive(), "the writer did not wait for the prune's transaction"
    thread.join(10.0)
    assert outcome == [2], outcome
    assert vouched is not None
    entries = audit_entries(broker.store)
    assert [e["action"] for e in entries[9:]] == [
        "audit.pruned",
        "message.viewed",
        "message.viewed",
    ]
    assert verify_trail(broker).ok


def _write(broker):
    try:
        return broker.write_store()
    except Exception as exc:  # reported to the test's thread, which asserts on it
        return exc


def test_a_prune_entry_whose_hash_is_not_the_kept_entrys_prev_is_named(trail):
    """A prune entry sealed with the key but recording another hash than entry 4's ``prev``
    (a faulty prune, or the chain replaced under it) does not vouch: ``broken`` at 4."""
    broker, now = trail
    entry = {
        "record": "pruned:10",
        "at": now,
        "actor": "passerelle",
        "action": "audit.pruned",
        "targets": {},
        "reason": "retention",
        "details": {"first": 1, "last": 3, "count": 3, "last_hash": "0" * 64, "before": now},
    }
    with broker.store.begin() as connection:
        Ledger(load_key(broker.settings)).append(connection, [entry])
    _sql(broker.store, ("DELETE FROM audit WHERE seq <= 3", {}))
    verdict = verify_trail(broker)
    assert (verdict.ok, verdict.first_bad, verdict.problem) == (False, 4, "broken")
