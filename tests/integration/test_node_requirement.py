"""Without Node the real FHIR server tests skip, and fail under ``CI=true`` (README).

The decision is ``_node_for_fhir_server`` in this directory's conftest, the one the
``start_fhir_server`` fixture calls; it is called here as pytest loaded it, with ``PATH`` on an
empty directory so that no ``node`` can be found. Not marked ``integration``: nothing starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")


def _integration_conftest(config: pytest.Config) -> ModuleType:
    """The module pytest loaded from tests/integration/conftest.py (its fixtures' own module)."""
    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, ModuleType) and Path(plugin.__file__ or "") == CONFTEST:
            return plugin
    raise AssertionError(f"{CONFTEST} is not loaded")


def _outcome(decide: Callable[[], str]) -> BaseException:
    """What the decision raised: a skip or a failure (either is caught, so neither escapes)."""
    try:
        node = decide()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        return exc
    raise AssertionError(f"neither skipped nor failed: found node at {node}")


@pytest.fixture
def decide(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], str]:
    """The fixture's decision function, with PATH on an empty directory (no node on it)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    function: Callable[[], str] = _integration_conftest(request.config)._node_for_fhir_server
    return function


@pytest.mark.parametrize("ci", [None, "false", ""], ids=["CI-unset", "CI-false", "CI-empty"])
def test_without_node_the_real_server_tests_are_skipped_with_the_reason(
    decide: Callable[[], str], monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    """No node on PATH and CI not "true": a skip naming what is missing and how to install it."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcome = _outcome(decide)
    assert isinstance(outcome, pytest.skip.Exception), f"not a skip: {outcome!r}"
    assert "node is not on PATH" in outcome.msg
    assert "Node.js >= 20" in outcome.msg


def test_without_node_under_ci_true_the_real_server_tests_fail(
    decide: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No node on PATH and CI=true: a failure (a CI run never passes by skipping them)."""
    monkeypatch.setenv("CI", "true")
    outcome = _outcome(decide)
    assert isinstance(outcome, pytest.fail.Exception), f"not a failure: {outcome!r}"
    assert "node is not on PATH" in outcome.msg
