"""Promise: outbound ER7 names, in MSH-18, the character set it is sent in (v2.5.1 §2.14.9.18).

An empty MSH-18 means ASCII (table 0211), so a subscriber sent UTF-8 or latin-1 text must be
told. The expected codes below are written from HL7 table 0211, not taken from the product:
"UNICODE UTF-8" exists from v2.5; v2.3 and v2.4 only have "UNICODE" (ISO/IEC 10646), which
senders use for UTF-8. The ER7 is read by splitting on "|" and CR, not with the product's parser.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.spec import AdapterSpec
from broker.errors import ConfigurationError
from broker.mapping import MapContext, MappingSet
from broker.parsing.hl7v2 import decode, parse

ROOT = Path(__file__).resolve().parents[2]
CTX = MapContext("env", "chu-rabat", received_at=datetime(2024, 3, 15, 10, 30, 5, tzinfo=UTC))
# (charset the subscriber is sent, version) -> MSH-18, from HL7 table 0211 of that version.
UTF8_BEFORE_25 = {"2.3": "UNICODE", "2.3.1": "UNICODE", "2.4": "UNICODE"}
VERSIONS = ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"]
CASES = [
    *[("utf-8", v, UTF8_BEFORE_25.get(v, "UNICODE UTF-8")) for v in VERSIONS],
    *[("latin-1", v, "8859/1") for v in VERSIONS],
    ("iso-8859-1", "2.5.1", "8859/1"),
    ("ascii", "2.5.1", "ASCII"),
]


@pytest.fixture(scope="module", name="bundle")
def fixture_bundle(mappings: MappingSet) -> dict[str, Any]:
    raw = (ROOT / "tests/samples/hl7v2/adt_a01_v251.hl7").read_bytes()
    return mappings.map_hl7v2(parse(decode(raw)), CTX).bundle


@pytest.mark.parametrize(("charset", "version", "code"), CASES)
def test_msh_18_names_the_charset_the_message_is_sent_in(
    mappings: MappingSet, bundle: dict[str, Any], charset: str, version: str, code: str
) -> None:
    """MSH-18 is the table 0211 code of the subscriber's charset in its version; MSH-13..17 empty."""
    text = mappings.render_hl7v2(
        bundle,
        version=version,
        control_id="C1",
        receiving_application="DPI",
        receiving_facility="CHUIS",
        charset=charset,
    )
    msh = text.split("\r")[0].split("|")
    # msh[0] is "MSH", msh[1] is MSH-2 (MSH-1 is the "|" itself), so MSH-n is msh[n - 1].
    assert msh[11] == version  # MSH-12
    assert msh[12:17] == ["", "", "", "", ""]  # MSH-13 to MSH-17
    assert msh[17] == code  # MSH-18
    assert len(msh) == 18


def test_a_charset_table_0211_cannot_name_is_refused(
    mappings: MappingSet, bundle: dict[str, Any]
) -> None:
    """Rendering for a charset without a table 0211 code (cp1252) is refused, not sent as ASCII."""
    with pytest.raises(ConfigurationError, match="cp1252"):
        mappings.render_hl7v2(
            bundle,
            version="2.5.1",
            control_id="C1",
            receiving_application="DPI",
            receiving_facility="CHUIS",
            charset="cp1252",
        )


def test_an_outbound_mllp_adapter_with_such_a_charset_does_not_load() -> None:
    """An outbound MLLP subscriber whose charset has no MSH-18 code is a configuration error."""
    spec = {
        "id": "dpi-legacy",
        "name": "DPI",
        "direction": "outbound",
        "transport": "mllp",
        "connect": "127.0.0.1:1",
        "charset": "cp1252",
        "subscribe": {"events": ["ADT^*"]},
    }
    with pytest.raises(ValueError, match="table 0211"):
        AdapterSpec.model_validate(spec)
    AdapterSpec.model_validate({**spec, "charset": "latin-1"})
