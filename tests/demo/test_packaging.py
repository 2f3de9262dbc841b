"""The simulator is a distribution of its own: the broker never imports it, it declares its needs."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

from broker.settings import REPO_ROOT

DEMO = REPO_ROOT / "demo"
"""The passerelle-demo distribution's directory."""


def _imports(root: Path) -> Iterator[tuple[str, str]]:
    """``(file:line, module)`` of every absolute import under ``root``, in functions too."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                yield f"{path.relative_to(REPO_ROOT)}:{node.lineno}", name


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_broker_never_imports_the_simulator() -> None:
    """No module of broker/ imports passerelle_demo, not even inside a function."""
    found = [
        f"{where}: {module}"
        for where, module in _imports(REPO_ROOT / "broker")
        if module.partition(".")[0] == "passerelle_demo"
    ]
    assert found == []


def test_every_third_party_import_of_the_simulator_is_a_declared_dependency() -> None:
    """A module passerelle_demo imports comes from a distribution demo/pyproject.toml names."""
    project = tomllib.loads((DEMO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {
        _normalise(m.group())
        for m in (re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r) for r in project["dependencies"])
        if m is not None
    }
    distributions = importlib.metadata.packages_distributions()
    own = {"passerelle_demo", "broker"}
    missing = []
    for where, module in _imports(DEMO / "passerelle_demo"):
        top = module.partition(".")[0]
        if top in sys.stdlib_module_names or top in own:
            continue
        providers = {_normalise(d) for d in distributions.get(top, [])}
        if not providers & wanted:
            missing.append(f"{where}: {module} (from {sorted(providers) or 'nothing installed'})")
    assert missing == [], "imported but not in demo/pyproject.toml:\n" + "\n".join(missing)
    assert "passerelle" in wanted


def test_the_broker_offers_the_simulator_as_its_demo_extra() -> None:
    """``pip install 'passerelle[demo]'`` brings passerelle-demo."""
    root = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert root["project"]["optional-dependencies"]["demo"] == ["passerelle-demo"]
