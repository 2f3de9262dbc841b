"""docs/architecture.md names real files and functions: the path of a message cannot go stale.

Issue 11 found the doc naming the wrong files for both drains; these checks make a moved or
renamed step fail here instead of misleading the next reader.
"""

from __future__ import annotations

import re

import pytest

from broker.settings import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
BROKER = REPO_ROOT / "broker"


def _block_after(heading: str) -> str:
    """The first fenced block after ``heading``."""
    start = DOC.index(heading)
    opening = DOC.index("```", start)
    return DOC[DOC.index("\n", opening) + 1 : DOC.index("```", opening + 3)]


PATH = _block_after("# How Passerelle")
NUMBERED = re.findall(r"^\s*\d+ .*$", PATH, re.M)
STEP = re.compile(r"^\s*\d+ (?P<file>[\w/]+\.py)(?: → [\w/.]+)?\s+(?P<name>[\w.]+)(?:\(\w*\))?\s")
STEPS = [m.groupdict() for m in map(STEP.match, NUMBERED) if m]


def test_every_numbered_step_names_a_file_and_a_function():
    """The diagram was read: each step is ``N file name`` (``(MULTI)``-style notes excepted)."""
    notes = [line for line in NUMBERED if re.match(r"^\s*\d+ [\w/.]+\s+\(", line)]
    assert len(NUMBERED) == 20
    assert len(STEPS) == len(NUMBERED) - len(notes), [
        line for line in NUMBERED if not STEP.match(line)
    ]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: f"{s['file']}:{s['name']}")
def test_each_step_names_a_function_or_class_defined_in_its_file(step: dict[str, str]) -> None:
    """``file  Name`` or ``file  Class.method``: defined in that file of broker/."""
    path = BROKER / step["file"]
    assert path.is_file(), f"docs/architecture.md names {step['file']}, which does not exist"
    source = path.read_text(encoding="utf-8")
    for name in step["name"].split("."):
        assert re.search(rf"^\s*(?:async )?(?:def|class) {name}\b", source, re.M), (
            f"docs/architecture.md: {step['file']} defines no {name}"
        )


TREE_NAMES = re.findall(r"\b([a-z_0-9]+(?:\.py|/))", _block_after("## The tree"))


@pytest.mark.parametrize("name", sorted(set(TREE_NAMES) - {"broker/", "demo/"}))
def test_each_module_and_folder_of_the_tree_exists(name: str) -> None:
    """Every ``x.py`` and ``x/`` of the tree is somewhere under broker/ (or the demo's package)."""
    roots = [BROKER, REPO_ROOT / "demo" / "passerelle_demo"]
    wanted = name.rstrip("/")
    found = [p for root in roots for p in root.rglob(wanted) if "__pycache__" not in p.parts]
    assert found, f"docs/architecture.md's tree names {name}, which does not exist"


def test_every_broker_package_is_in_the_tree():
    """A new subpackage gets its line in the tree."""
    packages = {p.parent.name + "/" for p in BROKER.rglob("__init__.py") if p.parent != BROKER}
    assert sorted(packages - set(TREE_NAMES)) == []
