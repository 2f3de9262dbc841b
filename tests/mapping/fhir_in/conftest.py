"""Shared fixtures for the FHIR inbound tests: the real mappings and a fixed context."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.mapping import MapContext, MappingSet

ROOT = Path(__file__).resolve().parents[3]
CASES = ROOT / "mappings" / "tests"


@pytest.fixture(scope="session", name="mappings")
def fixture_mappings() -> MappingSet:
    return MappingSet.load(ROOT / "mappings")


@pytest.fixture(name="ctx")
def fixture_ctx() -> MapContext:
    return MapContext("env-test", "dmp-in", received_at=datetime(2024, 3, 15, 10, 30, tzinfo=UTC))
