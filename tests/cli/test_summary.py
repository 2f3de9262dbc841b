"""What ``serve`` prints once it runs (``broker.cli.summary``): where things are, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from broker.adapters.spec import AdapterSpec
from broker.cli.summary import redact_url, startup_summary
from broker.settings import Settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@10.0.0.5:6379/0", "redis://:***@10.0.0.5:6379/0"),
        ("https://user:pw@fhir.example/r4", "https://user:***@fhir.example/r4"),
        ("http://127.0.0.1:9090/fhir", "http://127.0.0.1:9090/fhir"),
    ],
)
def test_a_url_s_password_is_never_shown(url, shown):
    assert redact_url(url) == shown


def test_the_summary_names_each_listener_and_subscriber_and_no_secret(tmp_path):
    adapters = [
        AdapterSpec(
            id="adt-in", name="A", direction="inbound", transport="mllp", listen="0.0.0.0:2575"
        ),
        AdapterSpec(id="fhir-in", name="F", direction="inbound", transport="http", format="fhir"),
        AdapterSpec(
            id="dmp",
            name="D",
            direction="outbound",
            transport="fhir-rest",
            url="https://svc:hunter2@dmp.example/fhir",
            subscribe={"events": ["ADT^*"]},
        ),
    ]
    settings = Settings(
        data_dir=tmp_path,
        redis_url="redis://:s3cret@10.0.0.5:6379/0",
        api_token=SecretStr("tok-123"),
    )
    text = startup_summary(
        settings,
        adapters,
        api_url="http://127.0.0.1:8000",
        token_file=Path("/var/x/api-token"),
        runtime_file=Path("/state/runtime.json"),
    )
    lines = [line.split() for line in text.splitlines()]
    assert ["console", "and", "API", "http://127.0.0.1:8000"] in lines
    assert ["API", "token", "in", "/var/x/api-token"] in lines
    assert ["listeners", "adt-in", "mllp", "0.0.0.0:2575"] in lines
    assert ["fhir-in", "http", "http://127.0.0.1:8000/inbound/fhir-in/fhir"] in lines
    assert ["subscribers", "dmp", "fhir-rest", "https://svc:***@dmp.example/fhir"] in lines
    assert ["Redis", "redis://:***@10.0.0.5:6379/0"] in lines
    for secret in ("s3cret", "hunter2", "tok-123"):
        assert secret not in text
