"""Adapter registrations: the repository's files load; every mistake names file, line and key."""

from __future__ import annotations

import pytest

from broker.adapters.spec import AdapterSpec, load_adapters
from broker.errors import AdapterSpecError
from broker.settings import REPO_ROOT

GOOD = """\
id: chu-rabat-adt
name: CHU Rabat - ADT
direction: inbound
transport: mllp
listen: 127.0.0.1:2575
format: hl7v2
"""


def write(tmp_path, text, name="a.yaml"):
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


class TestLoad:
    def test_every_repository_registration_loads(self):
        """adapters/*.yaml in the repository are valid, with the issue's three files as written."""
        specs = {s.id: s for s in load_adapters(REPO_ROOT / "adapters")}
        assert {"chu-rabat-adt", "dmp-national", "lab-legacy"} <= set(specs)
        assert specs["dmp-national"].url == "http://127.0.0.1:9090/fhir"
        assert specs["lab-legacy"].host_port == ("127.0.0.1", 2576)

    def test_unknown_key_names_its_line(self, tmp_path):
        """A misspelt key is refused at the line of that key."""
        write(tmp_path, GOOD + "lisen: 1.2.3.4:1\n")
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert (info.value.line, info.value.key) == (7, "lisen")
        assert "a.yaml:7: lisen: unknown key" in str(info.value)

    def test_bad_value_names_its_line_and_reason(self, tmp_path):
        """A listen address without a port is refused at its line, saying what was expected."""
        write(tmp_path, GOOD.replace("127.0.0.1:2575", "localhost"))
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert info.value.line == 5
        assert "expected host:port" in info.value.reason

    def test_outbound_without_subscription_is_refused(self, tmp_path):
        """An outbound adapter must say which events it receives."""
        write(
            tmp_path,
            "id: x\nname: X\ndirection: outbound\ntransport: fhir-rest\nurl: http://h/fhir\n",
        )
        with pytest.raises(AdapterSpecError, match="subscribe"):
            load_adapters(tmp_path)

    def test_yaml_syntax_error_has_a_line(self, tmp_path):
        """Broken YAML is reported with its line, not a traceback."""
        write(tmp_path, GOOD + "subscribe: [unclosed\n")
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert info.value.line is not None
        assert "YAML syntax error" in info.value.reason

    def test_duplicate_ids_are_refused(self, tmp_path):
        """Two files registering one id is an error naming the second file."""
        write(tmp_path, GOOD, "a.yaml")
        write(tmp_path, GOOD.replace("2575", "2580"), "b.yaml")
        with pytest.raises(AdapterSpecError, match="already registered"):
            load_adapters(tmp_path)

    def test_unknown_charset_and_zone_are_refused(self, tmp_path):
        """Charset and time zone are checked at load, not at the first message."""
        with pytest.raises(AdapterSpecError, match="character set"):
            load_adapters(write(tmp_path, GOOD + "charset: klingon-8\n"))
        with pytest.raises(AdapterSpecError, match="time zone"):
            load_adapters(write(tmp_path, GOOD + "timezone: Mars/Olympus\n"))


class TestSubscription:
    @pytest.mark.parametrize(
        ("patterns", "event", "wanted"),
        [
            pytest.param(["ADT^*"], "ADT^A08", True, id="wildcard"),
            pytest.param(["ADT^*"], "ORU^R01", False, id="other-type"),
            pytest.param(["ADT^A01", "ORU^R01"], "ORU^R01", True, id="list"),
        ],
    )
    def test_event_patterns(self, patterns, event, wanted):
        """Subscriptions match events by exact name or shell-style pattern."""
        spec = AdapterSpec(
            id="s",
            name="S",
            direction="outbound",
            transport="mllp",
            connect="h:1",
            subscribe={"events": patterns},
        )
        assert spec.subscribe is not None
        assert spec.subscribe.wants(event, "any-source") is wanted
