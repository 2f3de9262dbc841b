"""Adapter registrations: the repository's files load; every mistake names file, line and key."""

from __future__ import annotations

import ssl

import pytest
import yaml

from broker.adapters.spec import AdapterSpec, Sender, load_adapters
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
            "id: x\nname: X\ndirection: outbound\ntransport: fhir-rest\nurl: https://h/fhir\n",
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


LAB = """\
id: lab-legacy
name: Legacy lab system
direction: outbound
transport: mllp
connect: 127.0.0.1:2576
subscribe:
  events: ["ORU^R01"]
"""


class TestHl7Version:
    def test_default_is_251(self, tmp_path):
        """An MLLP subscriber without hl7_version receives v2.5.1."""
        (spec,) = load_adapters(write(tmp_path, LAB))
        assert (spec.hl7_version, spec.version) == ("2.5.1", "2.5.1")

    @pytest.mark.parametrize("key", ["hl7_version", "version"])
    def test_chosen_version_and_older_spelling(self, tmp_path, key):
        """hl7_version (or the older version:) picks the version rendered for the subscriber."""
        (spec,) = load_adapters(write(tmp_path, LAB + f'{key}: "2.3"\n'))
        assert spec.hl7_version == "2.3"

    def test_not_an_hl7_version_names_its_line(self, tmp_path):
        """A value that is no HL7 v2 version is refused at load, at its line."""
        write(tmp_path, LAB + 'hl7_version: "2.9"\n')
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert "a.yaml:8: hl7_version:" in str(info.value)

    def test_a_version_no_outbound_mapping_writes_is_refused(self, tmp_path):
        """With the mappings' versions, one they do not write is refused: file:line: key: reason."""
        write(tmp_path, LAB + 'hl7_version: "2.8"\n')
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path, hl7_versions={"2.3", "2.5.1"})
        assert str(info.value) == (
            f"{tmp_path / 'a.yaml'}:8: hl7_version: no outbound mapping writes HL7 v2.8; "
            "expected one of 2.3, 2.5.1"
        )

    def test_repository_subscribers_fit_the_repository_mappings(self):
        """adapters/ against mappings/: every HL7 subscriber's version is one the mappings write."""
        from broker.mapping import MappingSet

        versions = MappingSet.load(REPO_ROOT / "mappings").hl7_versions
        assert {"2.3", "2.5.1"} <= versions
        load_adapters(REPO_ROOT / "adapters", hl7_versions=versions)


class TestSenders:
    """``senders:``: the MSH-3/MSH-4 an inbound HL7 v2 adapter accepts."""

    def test_absent_means_any_sender(self, tmp_path):
        """Without senders: nothing is checked (the default)."""
        (spec,) = load_adapters(write(tmp_path, GOOD))
        assert spec.senders is None

    def test_entries_name_an_application_a_facility_or_both(self, tmp_path):
        """Block and flow entries load; either key may be left out."""
        text = GOOD + (
            "senders:\n"
            "  - application: HIS\n"
            "    facility: CHU-RABAT\n"
            "  - {facility: 2.16.504.1.10}\n"
        )
        (spec,) = load_adapters(write(tmp_path, text))
        assert spec.senders is not None
        assert [(s.application, s.facility) for s in spec.senders] == [
            ("HIS", "CHU-RABAT"),
            (None, "2.16.504.1.10"),
        ]

    @pytest.mark.parametrize(
        ("senders", "line", "key", "reason"),
        [
            pytest.param(
                "senders:\n  - {aplication: HIS}\n",
                8,
                "senders[0].aplication",
                "unknown key",
                id="misspelt-key",
            ),
            pytest.param(
                "senders:\n  - {}\n",
                8,
                "senders[0]",
                "names its application (MSH-3), its facility (MSH-4) or both",
                id="empty-entry",
            ),
            pytest.param("senders: []\n", 7, "senders", "at least 1 item", id="empty-list"),
            pytest.param(
                "senders:\n  - {facility: ''}\n",
                8,
                "senders[0].facility",
                "at least 1 character",
                id="empty-value",
            ),
        ],
    )
    def test_a_mistake_names_its_line_and_key(self, tmp_path, senders, line, key, reason):
        """Each mistake in senders is refused as file:line: key: reason."""
        write(tmp_path, GOOD + senders)
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert (info.value.line, info.value.key) == (line, key)
        assert reason in info.value.reason
        assert f"a.yaml:{line}: {key}: " in str(info.value)

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param(
                "id: f\nname: F\ndirection: inbound\ntransport: http\nformat: fhir\n", id="fhir"
            ),
            pytest.param(
                "id: o\nname: O\ndirection: outbound\ntransport: mllp\nconnect: 127.0.0.1:1\n"
                "subscribe: {events: ['ADT^*']}\n",
                id="outbound",
            ),
        ],
    )
    def test_only_inbound_hl7v2_adapters_have_senders(self, tmp_path, text):
        """MSH-3/MSH-4 exist only in HL7 v2 that comes in: senders elsewhere is refused."""
        write(tmp_path, text + "senders:\n  - {facility: CHU-RABAT}\n")
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert info.value.key == "senders"
        assert "inbound adapters of format hl7v2" in info.value.reason

    @pytest.mark.parametrize(
        ("application", "facility", "accepted"),
        [
            pytest.param(("HIS", ""), ("CHU-RABAT", ""), True, id="namespace-ids"),
            pytest.param(("", "1.2.3"), ("", "2.16.504.1.10"), True, id="universal-ids"),
            pytest.param(("HIS", ""), ("CHU-CASA", ""), False, id="other-facility"),
            pytest.param(("LAB", ""), ("CHU-RABAT", ""), False, id="other-application"),
        ],
    )
    def test_a_sender_matches_hd1_or_hd2(self, application, facility, accepted):
        """A value matches the HD's namespace ID or its universal ID; a missing key matches all."""
        both = Sender(application="HIS", facility="CHU-RABAT")
        by_oid = Sender(application="1.2.3", facility="2.16.504.1.10")
        anyone_at_rabat = Sender(facility="CHU-RABAT")
        assert (both.matches(application, facility) or by_oid.matches(application, facility)) is (
            accepted
        )
        assert anyone_at_rabat.matches(("ANY", ""), ("CHU-RABAT", ""))


class TestOnInvalidSegment:
    """``on_invalid_segment``: what a malformed segment group does to an inbound message."""

    def test_default_is_drop(self, tmp_path):
        """Without the key, a malformed OBX is dropped and the rest delivered."""
        (spec,) = load_adapters(write(tmp_path, GOOD))
        assert spec.on_invalid_segment == "drop"

    def test_quarantine_is_accepted(self, tmp_path):
        """A site may quarantine the whole message instead."""
        (spec,) = load_adapters(write(tmp_path, GOOD + "on_invalid_segment: quarantine\n"))
        assert spec.on_invalid_segment == "quarantine"

    def test_another_value_names_its_line_and_the_choices(self, tmp_path):
        """A value other than drop or quarantine is refused at its line, naming both."""
        write(tmp_path, GOOD + "on_invalid_segment: ignore\n")
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert (info.value.line, info.value.key) == (7, "on_invalid_segment")
        assert "'drop'" in info.value.reason
        assert "'quarantine'" in info.value.reason

    def test_an_outbound_adapter_cannot_quarantine_segments(self, tmp_path):
        """The setting is about inbound messages; on a subscriber it is a mistake, said so."""
        write(tmp_path, LAB + "on_invalid_segment: quarantine\n")
        with pytest.raises(AdapterSpecError, match="on_invalid_segment is for inbound"):
            load_adapters(tmp_path)


class TestIdentifierSystems:
    """Issue 8: identifier_systems is checked strictly, with file:line: key: reason."""

    def test_a_valid_list_loads(self, tmp_path):
        """Entries by authority, type, both, or FHIR local system are read in order."""
        write(
            tmp_path,
            GOOD
            + "identifier_systems:\n"
            + "  - {authority: EPI, system: 'https://chu-rabat.ma/fhir/sid/epi'}\n"
            + "  - {type: MR, authority: CHUIS, system: 'urn:oid:2.16.504.1.100.1.2'}\n",
        )
        spec = load_adapters(tmp_path)[0]
        assert [s.system for s in spec.identifier_systems] == [
            "https://chu-rabat.ma/fhir/sid/epi",
            "urn:oid:2.16.504.1.100.1.2",
        ]

    @pytest.mark.parametrize(
        ("entry", "reason"),
        [
            pytest.param("{authority: EPI, system: epi}", "absolute URI", id="not-a-uri"),
            pytest.param(
                "{system: 'https://x.ma/sid'}", "give what the entry matches", id="matches-nothing"
            ),
            pytest.param(
                "{autority: EPI, system: 'https://x.ma/sid'}", "autority", id="unknown-key"
            ),
        ],
    )
    def test_a_bad_entry_names_its_line(self, tmp_path, entry, reason):
        """A bad entry stops loading at its line, naming the key and the reason."""
        write(tmp_path, GOOD + "identifier_systems:\n  - " + entry + "\n")
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert info.value.line == 8
        assert info.value.key.startswith("identifier_systems[0]")
        assert reason in str(info.value)


class TestConditionalReferences:
    """``conditional_references``: logical references sent as ``Type?identifier=…``."""

    def test_a_fhir_subscriber_may_ask_for_them(self):
        """Off by default on the repository's FHIR subscriber; read when given."""
        specs = {s.id: s for s in load_adapters(REPO_ROOT / "adapters")}
        assert specs["dmp-national"].conditional_references is False
        text = (REPO_ROOT / "adapters" / "dmp-national.yaml").read_text(encoding="utf-8")
        assert AdapterSpec.model_validate(
            {**yaml.safe_load(text), "conditional_references": True}
        ).conditional_references

    def test_an_inbound_adapter_cannot_have_them(self, tmp_path):
        """They are about what a FHIR server receives: elsewhere a mistake, said so at load."""
        write(tmp_path, GOOD + "conditional_references: true\n")
        with pytest.raises(AdapterSpecError, match="'conditional_references' is for outbound"):
            load_adapters(tmp_path)


class TestTls:
    """``tls:`` (MLLP over TLS) and ``allow_from:``: files checked at load, mistakes located."""

    @staticmethod
    def pki_files(tmp_path, tls_pki):
        """Copy the test PKI beside the registration, in tls/, to name it by relative paths."""
        folder = tmp_path / "tls"
        folder.mkdir()
        for source in [tls_pki.ca, tls_pki.server_cert, tls_pki.key(tls_pki.server_cert)]:
            (folder / source.name).write_bytes(source.read_bytes())
        return folder

    def test_relative_paths_are_read_from_the_registration_directory(self, tmp_path, tls_pki):
        """cert/key/ca relative to the registration file become absolute paths that exist."""
        folder = self.pki_files(tmp_path, tls_pki)
        text = GOOD + (
            "tls:\n  cert: tls/server.pem\n  key: tls/server.key\n  ca: tls/ca.pem\n"
            "  client_cert: required\nallow_from: [10.0.0.0/8, 127.0.0.1]\n"
        )
        (spec,) = load_adapters(write(tmp_path, text))
        assert spec.tls is not None
        assert (spec.tls.cert, spec.tls.key, spec.tls.ca) == (
            folder / "server.pem",
            folder / "server.key",
            folder / "ca.pem",
        )
        assert spec.tls.client_cert == "required"
        assert spec.tls.server_context().verify_mode is ssl.CERT_REQUIRED
        assert spec.tls.server_context().minimum_version is ssl.TLSVersion.TLSv1_2

    def test_a_missing_file_names_its_line(self, tmp_path, tls_pki):
        """A tls path to nothing is refused at its own line, with the path it looked for."""
        self.pki_files(tmp_path, tls_pki)
        text = GOOD + "tls:\n  cert: tls/server.pem\n  key: tls/missing.key\n"
        write(tmp_path, text)
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert (info.value.line, info.value.key) == (9, "tls.key")
        assert str(tmp_path / "tls" / "missing.key") in info.value.reason
        assert "a.yaml:9: tls.key: " in str(info.value)

    @pytest.mark.parametrize(
        ("block", "line", "key", "reason"),
        [
            pytest.param(
                "tls:\n  ca: tls/ca.pem\n", 8, "tls", "needs 'cert'", id="listener-without-cert"
            ),
            pytest.param(
                "tls:\n  cert: tls/server.pem\n  key: tls/server.key\n  client_cert: required\n",
                8,
                "tls",
                "needs 'ca'",
                id="mutual-without-ca",
            ),
            pytest.param(
                "tls:\n  cert: tls/server.pem\n  key: tls/server.key\n  client_cert: always\n",
                10,
                "tls.client_cert",
                "'required', 'optional' or 'none'",
                id="unknown-client-cert",
            ),
            pytest.param(
                "tls:\n  cert: tls/server.pem\n  key: tls/ca.pem\n",
                8,
                "tls",
                "do not load",
                id="key-not-matching",
            ),
            pytest.param(
                "allow_from: [10.1.2.3/8]\n",
                7,
                "allow_from",
                "did you mean 10.0.0.0/8",
                id="host-bits",
            ),
            pytest.param(
                "allow_from: [hospital.ma]\n", 7, "allow_from", "expected an IP", id="a-name"
            ),
        ],
    )
    def test_a_mistake_names_its_line_and_key(self, tmp_path, tls_pki, block, line, key, reason):
        """Each mistake in tls/allow_from is refused as file:line: key: reason."""
        self.pki_files(tmp_path, tls_pki)
        write(tmp_path, GOOD + block)
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert (info.value.line, info.value.key) == (line, key)
        assert reason in info.value.reason

    def test_outbound_tls_and_where_each_key_belongs(self, tmp_path, tls_pki):
        """An MLLP subscriber may name ca and server_name; client_cert and allow_from are
        inbound keys, and tls is for mllp only."""
        self.pki_files(tmp_path, tls_pki)
        outbound = LAB + "tls:\n  ca: tls/ca.pem\n  server_name: lis.example.org\n"
        (spec,) = load_adapters(write(tmp_path, outbound))
        assert spec.tls is not None
        assert spec.tls.server_name == "lis.example.org"
        assert spec.tls.client_context().verify_mode is ssl.CERT_REQUIRED
        with pytest.raises(AdapterSpecError, match="client_cert' is for inbound"):
            load_adapters(write(tmp_path, outbound + "  client_cert: optional\n"))
        with pytest.raises(AdapterSpecError, match="allow_from' is for inbound"):
            load_adapters(write(tmp_path, LAB + "allow_from: [10.0.0.0/8]\n"))
        http = "id: w\nname: W\ndirection: inbound\ntransport: http\n"
        with pytest.raises(AdapterSpecError, match="'tls' is for mllp"):
            load_adapters(write(tmp_path, http + "tls:\n  cert: tls/server.pem\n"))


FHIR_SUB = """\
id: dmp-national
name: DMP
direction: outbound
transport: fhir-rest
subscribe:
  events: ["ADT^*"]
"""


class TestOutboundFhirSecurity:
    def test_plain_http_is_refused_at_its_line_saying_how_to_allow_it(self, tmp_path):
        """url: http://... without insecure_http: the url's line, and the key that allows it."""
        write(tmp_path, FHIR_SUB + "url: http://127.0.0.1:9090/fhir\n")
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert (info.value.line, info.value.key) == (7, "url")
        assert "insecure_http: true" in info.value.reason

    def test_loopback_http_is_allowed_only_when_said(self, tmp_path):
        """insecure_http: true lets an http:// url load."""
        write(tmp_path, FHIR_SUB + "insecure_http: true\nurl: http://127.0.0.1:9090/fhir\n")
        (spec,) = load_adapters(tmp_path)
        assert spec.insecure_http
        assert spec.url == "http://127.0.0.1:9090/fhir"

    def test_insecure_http_is_for_fhir_subscribers(self, tmp_path):
        """insecure_http on an inbound MLLP adapter is a mistake, named."""
        write(tmp_path, GOOD + "insecure_http: true\n")
        with pytest.raises(AdapterSpecError, match="for outbound fhir-rest"):
            load_adapters(tmp_path)

    def test_tls_files_of_a_fhir_subscriber_are_checked(self, tmp_path):
        """tls.ca that does not exist: file, line and key of the ca."""
        write(tmp_path, FHIR_SUB + "url: https://dmp.sante.ma/fhir\ntls:\n  ca: nowhere.pem\n")
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert (info.value.line, info.value.key) == (9, "tls.ca")
        assert "no such file" in info.value.reason

    def test_tls_on_an_http_url_is_refused(self, tmp_path, tls_pki):
        """tls: with an http:// url (allowed insecure) makes no sense: refused."""
        text = f"insecure_http: true\nurl: http://h/fhir\ntls:\n  ca: {tls_pki.ca}\n"
        write(tmp_path, FHIR_SUB + text)
        with pytest.raises(AdapterSpecError, match="needs an https:// url"):
            load_adapters(tmp_path)

    def test_an_inline_secret_is_refused(self, tmp_path):
        """auth.client_secret in the YAML: refused, pointing at client_secret_env/_file."""
        text = (
            "url: https://dmp.sante.ma/fhir\nauth:\n  kind: client_credentials\n"
            "  token_url: https://auth.sante.ma/token\n  client_id: p\n  client_secret: hunter2\n"
        )
        write(tmp_path, FHIR_SUB + text)
        with pytest.raises(AdapterSpecError) as info:
            load_adapters(tmp_path)
        assert info.value.key.startswith("auth")
        assert "client_secret_env" in info.value.reason
        assert "hunter2" not in str(info.value)

    def test_an_unset_secret_variable_is_refused_at_load(self, tmp_path, monkeypatch):
        """client_secret_env names a variable the environment lacks: refused, naming it."""
        monkeypatch.delenv("PASSERELLE_NO_SUCH_SECRET", raising=False)
        text = (
            "url: https://dmp.sante.ma/fhir\nauth:\n  kind: client_credentials\n"
            "  token_url: https://auth.sante.ma/token\n  client_id: p\n"
            "  client_secret_env: PASSERELLE_NO_SUCH_SECRET\n"
        )
        write(tmp_path, FHIR_SUB + text)
        with pytest.raises(AdapterSpecError, match=r"PASSERELLE_NO_SUCH_SECRET .* is not set"):
            load_adapters(tmp_path)

    def test_an_http_token_endpoint_needs_insecure_http(self, tmp_path, monkeypatch):
        """auth.token_url http:// is refused like url."""
        monkeypatch.setenv("PASSERELLE_SECRET", "x")
        text = (
            "url: https://dmp.sante.ma/fhir\nauth:\n  kind: client_credentials\n"
            "  token_url: http://auth.sante.ma/token\n  client_id: p\n"
            "  client_secret_env: PASSERELLE_SECRET\n"
        )
        write(tmp_path, FHIR_SUB + text)
        with pytest.raises(AdapterSpecError, match=r"auth\.token_url .* is plain http"):
            load_adapters(tmp_path)

    def test_smart_backend_needs_a_fitting_key_and_a_kid(self, tmp_path, tls_pki):
        """The test CA's P-256 key is neither RSA nor P-384; a missing key_id is named."""
        base = (
            "url: https://dmp.sante.ma/fhir\nauth:\n  kind: smart_backend\n"
            "  token_url: https://auth.sante.ma/token\n  client_id: p\n"
        )
        write(
            tmp_path, FHIR_SUB + base + f"  private_key: {tls_pki.key(tls_pki.ca)}\n  key_id: k\n"
        )
        with pytest.raises(AdapterSpecError, match="neither an RSA key"):
            load_adapters(tmp_path)
        write(tmp_path, FHIR_SUB + base + f"  private_key: {tls_pki.key(tls_pki.ca)}\n")
        with pytest.raises(AdapterSpecError, match="needs private_key and key_id"):
            load_adapters(tmp_path)
