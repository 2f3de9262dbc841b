"""What the wheel holds and needs: every package listed, every import a declared dependency.

``tests/integration/test_wheel_install.py`` proves a clean install runs; these are the cheap
checks that point at the line of ``pyproject.toml`` to fix.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from broker.settings import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
OWN = {"broker", "passerelle_mappings"}


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (``PyYAML`` = ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    """The runtime dependencies' distribution names (dev extras are not there in production)."""
    found = set()
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert name is not None, requirement
        found.add(normalise(name.group()))
    return found


def imported_modules() -> dict[str, str]:
    """Top-level module imported anywhere in broker/ → the first ``file:line`` importing it."""
    found: dict[str, str] = {}
    for path in sorted((REPO_ROOT / "broker").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                found.setdefault(name.partition(".")[0], where)
    return found


def test_every_third_party_import_in_broker_is_a_declared_dependency():
    """A module the broker imports must come from a distribution in [project] dependencies."""
    distributions = importlib.metadata.packages_distributions()
    wanted = declared()
    missing = []
    for module, where in sorted(imported_modules().items()):
        if module in sys.stdlib_module_names or module in OWN:
            continue
        providers = {normalise(d) for d in distributions.get(module, [])}
        if not providers & wanted:
            missing.append(f"{where}: {module} (from {sorted(providers) or 'nothing installed'})")
    assert missing == [], "imported but not declared in pyproject.toml:\n" + "\n".join(missing)


def test_the_redis_transport_gets_its_own_dependencies():
    """kombu's Redis transport imports ``packaging`` and ``redis``: ask for them by its extra."""
    dependencies = {normalise(d.partition(">")[0]) for d in PYPROJECT["project"]["dependencies"]}
    assert {"celery[redis]", "kombu[redis]"} <= dependencies


def test_every_broker_package_is_in_the_wheel():
    """``[tool.setuptools] packages`` is a list: a new subpackage must be added to it."""
    on_disk = {
        ".".join(p.parent.relative_to(REPO_ROOT).parts)
        for p in (REPO_ROOT / "broker").rglob("__init__.py")
    }
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert sorted(on_disk - listed) == []
    assert listed - on_disk == {"passerelle_mappings"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"passerelle_mappings": "mappings"}


# Declared but never imported by broker/, each for a reason a reader can check.
NOT_IMPORTED = {
    # Celery titles its worker processes `[celeryd: …]` only when setproctitle is installed
    # (integration/test_serve.py::test_worker_processes_are_titled_as_celery).
    "setproctitle",
    # Celery's Redis broker is kombu's transport: its `redis` extra brings what that transport
    # imports (packaging, redis), which `celery[redis]` alone did not guarantee (issue 8).
    "kombu",
    # SQLAlchemy's PostgreSQL driver for `postgresql+psycopg://` store URLs (broker/store/db.py):
    # loaded by SQLAlchemy from the URL, never imported by name.
    "psycopg",
    # redis-py imports hiredis itself when it is installed (its C reply parser).
    "hiredis",
}


def test_every_runtime_dependency_is_imported_by_the_broker():
    """Runtime dependencies are what the broker imports: nothing declared and never used.

    A dependency only the tests, the benchmark or the demo need belongs to the ``dev`` extra or
    to the demo's own distribution; one needed at run time without an import is listed in
    ``NOT_IMPORTED`` with its reason.
    """
    distributions = importlib.metadata.packages_distributions()
    used = {
        normalise(provider)
        for module in imported_modules()
        for provider in distributions.get(module, [])
    }
    unused = sorted(
        requirement
        for requirement in declared()
        if requirement not in used and requirement not in NOT_IMPORTED
    )
    assert unused == [], f"declared in pyproject.toml but never imported by broker/: {unused}"
