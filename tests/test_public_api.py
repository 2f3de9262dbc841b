"""Each package declares its public surface: ``__all__`` is sorted and every name exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import broker

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(broker.__path__, "broker.")
    if info.name not in ("broker.__main__",)
)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_complete(name):
    """A module's ``__all__`` lists names it defines, in sorted order."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.skip(f"{name} has no __all__")
    assert list(exported) == sorted(exported, key=lambda n: (n.upper() != n, n)) or list(
        exported
    ) == sorted(exported)
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing
