"""Promises of broker.config: every process role loads the same configuration with the same checks.

A registration (or a mapping) that ``load_config`` refuses is refused by the listener, the API's
inbound edge and a worker process, with the same message, before anything starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from broker.config import Config, load_config
from broker.errors import AdapterSpecError, ConfigurationError, MappingSpecError
from broker.mapping import MappingSet
from broker.mapping.spec import HL7_VERSIONS
from broker.settings import REPO_ROOT, Settings
from broker.testing import StubCelery, free_port, write_adapter

SOURCE = {
    "id": "chu-rabat-adt",
    "name": "CHU Rabat",
    "direction": "inbound",
    "transport": "mllp",
    "listen": "127.0.0.1:2575",
}
GATEWAY = {
    "id": "chu-rabat-fhir",
    "name": "CHU Rabat FHIR",
    "direction": "inbound",
    "transport": "http",
    "format": "fhir",
}
LAB = {
    "id": "lab-legacy",
    "name": "Lab",
    "direction": "outbound",
    "transport": "mllp",
    "connect": "127.0.0.1:2999",
    "hl7_version": "2.5.1",
    "subscribe": {"events": ["ADT^*"]},
}


@pytest.fixture(scope="module", name="written")
def fixture_written() -> frozenset[str]:
    """The HL7 v2 versions the base set's outbound mappings write."""
    return MappingSet.load(Settings().mapping_roots).hl7_versions


def _unwritten(written: frozenset[str]) -> str:
    return next(v for v in reversed(HL7_VERSIONS) if v not in written)


def _settings(root: Path, **options: Any) -> Settings:
    return Settings(
        adapters_dir=root / "adapters",
        data_dir=root / "data",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # never reached: nothing starts
        **options,
    )


# Each bad configuration: what to write under ``root`` and the error every role must give.
def _old_version(root: Path, written: frozenset[str]) -> dict[str, Any]:
    for spec in (SOURCE, GATEWAY, {**LAB, "hl7_version": _unwritten(written)}):
        write_adapter(root / "adapters", spec)
    return {}


def _duplicate_id(root: Path, written: frozenset[str]) -> dict[str, Any]:
    write_adapter(root / "adapters", GATEWAY)
    write_adapter(root / "adapters", {**SOURCE, "id": "a-source"})
    (root / "adapters" / "b-source.yaml").write_text(
        (root / "adapters" / "a-source.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    return {}


def _unknown_key(root: Path, written: frozenset[str]) -> dict[str, Any]:
    write_adapter(root / "adapters", GATEWAY)
    write_adapter(root / "adapters", {**LAB, "retries": 3})
    return {}


def _broken_mapping(root: Path, written: frozenset[str]) -> dict[str, Any]:
    for spec in (SOURCE, GATEWAY, LAB):
        write_adapter(root / "adapters", spec)
    site = root / "site-mappings"
    site.mkdir()
    (site / "broken.yaml").write_text("source: {{\n", encoding="utf-8")
    return {"mappings_dir": site}


BAD = [
    pytest.param(_old_version, AdapterSpecError, id="hl7_version-no-mapping-writes"),
    pytest.param(_duplicate_id, AdapterSpecError, id="duplicate-adapter-id"),
    pytest.param(_unknown_key, AdapterSpecError, id="unknown-key"),
    pytest.param(_broken_mapping, MappingSpecError, id="broken-mapping-file"),
]


class StartedAnyway(AssertionError):
    """A role got past its configuration check and began to start."""


def _listener(settings: Settings) -> None:
    from broker import listen

    def tripwire(*args: Any, **kwargs: Any) -> NoReturn:
        raise StartedAnyway

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(listen.Listeners, "start", tripwire)
        listen.run_listeners(settings)


def _worker(settings: Settings) -> None:
    from broker.worker import runtime as worker_runtime

    with pytest.MonkeyPatch.context() as patch:
        for name in ("_runtime", "_settings", "_celery"):  # given back on leaving
            patch.setattr(worker_runtime, name, None)
        worker_runtime.configure(StubCelery(), settings)
        worker_runtime.runtime()


def _api(settings: Settings) -> None:
    """The API keeps serving; its inbound edge reports the refusal (raised here to compare)."""
    from broker.api import create_app

    app = create_app(settings)
    app.state.inbound_celery = StubCelery()

    async def lifespan() -> str | None:
        async with app.router.lifespan_context(app):
            problem: str | None = app.state.inbound.problem
            return problem

    problem = asyncio.run(lifespan())
    if problem is None:
        raise StartedAnyway
    raise ConfigurationError(problem)


ROLES: dict[str, Callable[[Settings], None]] = {
    "check": load_config,
    "listener": _listener,
    "worker": _worker,
}


@pytest.mark.parametrize(("write", "error"), BAD)
def test_every_role_refuses_a_bad_configuration_with_the_same_message(
    tmp_path: Path, written: frozenset[str], write: Any, error: type[Exception]
) -> None:
    """check, the listener and a worker raise the same error; the API's inbound edge names it."""
    settings = _settings(tmp_path, **write(tmp_path, written))
    messages = {}
    for role, start in ROLES.items():
        with pytest.raises(error) as raised:
            start(settings)
        messages[role] = str(raised.value)
    assert len(set(messages.values())) == 1, messages
    (message,) = set(messages.values())
    with pytest.raises(ConfigurationError) as refused:
        _api(settings)
    what = "adapter registrations" if error is AdapterSpecError else "mappings"
    assert str(refused.value) == f"{what} cannot be loaded: {message}".splitlines()[0]


def test_an_hl7_version_no_mapping_writes_is_named_with_file_and_line(
    tmp_path: Path, written: frozenset[str]
) -> None:
    """The refusal names the file, the line and the key, and lists the versions written."""
    _old_version(tmp_path, written)
    with pytest.raises(AdapterSpecError) as raised:
        load_config(_settings(tmp_path))
    path = tmp_path / "adapters" / "lab-legacy.yaml"
    assert str(raised.value).startswith(f"{path}:")
    assert f": hl7_version: no outbound mapping writes HL7 v{_unwritten(written)}" in str(
        raised.value
    )


@pytest.fixture(scope="module", name="config")
def fixture_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("config")
    for spec in (SOURCE, GATEWAY, LAB, {**SOURCE, "id": "off", "enabled": False}):
        write_adapter(root / "adapters", spec)
    return load_config(_settings(root))


class TestConfig:
    def test_it_holds_every_registration_by_id(self, config: Config) -> None:
        """Enabled or not, in file order."""
        assert list(config.adapters) == ["chu-rabat-adt", "chu-rabat-fhir", "lab-legacy", "off"]

    def test_roles_pick_their_adapters(self, config: Config) -> None:
        """The listener's (inbound mllp), the API's (inbound http), the workers' subscribers."""
        assert [a.id for a in config.inbound("mllp")] == ["chu-rabat-adt"]
        assert [a.id for a in config.inbound("http")] == ["chu-rabat-fhir"]
        assert [a.id for a in config.subscribers] == ["lab-legacy"]

    def test_supports_asks_the_mappings_serving_now(self, config: Config) -> None:
        """The base set maps ADT^A01 v2.5.1 and no ZZZ^Z99."""
        assert config.supports("ADT^A01", "2.5.1", "chu-rabat-adt")
        assert not config.supports("ZZZ^Z99", "2.5.1", "chu-rabat-adt")
        assert config.mappings is config.watcher.current()

    def test_given_mappings_are_still_checked(
        self, tmp_path: Path, written: frozenset[str]
    ) -> None:
        """Mappings loaded once (EagerBroker) skip the load, never the registration check."""
        _old_version(tmp_path, written)
        settings = _settings(tmp_path)
        with pytest.raises(AdapterSpecError):
            load_config(settings, mappings=MappingSet.load(settings.mapping_roots))


def test_the_repository_configuration_loads() -> None:
    """adapters/ and mappings/ of the repository pass the checks every role runs."""
    config = load_config(Settings(adapters_dir=REPO_ROOT / "adapters"))
    assert config.subscribers
