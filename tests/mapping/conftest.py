"""Shared fixtures for the mapping tests: the real mappings and the sample messages."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.mapping import MapContext, MappingSet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", name="mappings")
def fixture_mappings() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")


@pytest.fixture(name="ctx")
def fixture_ctx() -> MapContext:
    return MapContext(
        "env-test", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC)
    )


@pytest.fixture(name="golden_root")
def fixture_golden_root(tmp_path: Path) -> Callable[..., Path]:
    """A factory: a copy of mappings/ in tmp_path holding only the golden cases named.

    ``make("adt_a01", "chu-rabat-adt/adt_a01_zpi")`` copies each case's input and expected file;
    the golden set is run once, in test_golden.py, and CLI tests use a couple of cases.
    """

    def make(*keys: str, dest: Path | None = None) -> Path:
        root = dest or tmp_path / "mappings"
        shutil.copytree(
            ROOT / "mappings",
            root,
            ignore=lambda d, _: ["tests"] if d == str(ROOT / "mappings") else [],
        )
        for key in keys:
            for source in (ROOT / "mappings" / "tests").glob(f"{key}.*"):
                target = root / "tests" / source.relative_to(ROOT / "mappings" / "tests")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        return root

    return make
