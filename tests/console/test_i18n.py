"""The console's catalogues: French and English have the same keys, and every key used exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.console import PAGES, i18n

CONSOLE = Path(i18n.__file__).parent
STATUSES = ("open", "replaying", "delivered", "discarded", "all")
_TEMPLATE_KEY = re.compile(r"""\bt\(\s*["']([^"']+)["']\s*\)""")
_SCRIPT_KEY = re.compile(r"""\bt\(\s*"([^"]+)"\s*[,)]""")
_PREFIX = re.compile(r"""\bt\(\s*["']([a-z.-]+\.)["']\s*\+""")
_ERROR_KEY = re.compile(r'error="([a-z_.]+)"')


def used_keys() -> set[str]:
    """Every literal key a template or script passes to ``t``, the login errors, and the
    keys built from a prefix (pages, languages, dead-letter statuses)."""
    keys: set[str] = set()
    for path in (CONSOLE / "templates").glob("*.html"):
        keys |= set(_TEMPLATE_KEY.findall(path.read_text(encoding="utf-8")))
    for path in (CONSOLE / "static").glob("*.js"):
        keys |= set(_SCRIPT_KEY.findall(path.read_text(encoding="utf-8")))
    keys |= set(_ERROR_KEY.findall((CONSOLE / "routes.py").read_text(encoding="utf-8")))
    keys |= {f"nav.{page}" for page in PAGES}
    keys |= {f"lang.{language}" for language in i18n.LANGUAGES}
    keys |= {f"dead.status.{status}" for status in STATUSES}
    return keys


def used_prefixes() -> set[str]:
    found: set[str] = set()
    for path in [*(CONSOLE / "templates").glob("*.html"), *(CONSOLE / "static").glob("*.js")]:
        found |= set(_PREFIX.findall(path.read_text(encoding="utf-8")))
    return found


def test_both_catalogues_have_the_same_keys() -> None:
    english, french = (set(i18n.catalogue(lang)) for lang in ("en", "fr"))
    assert english - french == set(), "missing in fr.json"
    assert french - english == set(), "missing in en.json"


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_key_used_exists(language: str) -> None:
    keys = used_keys()
    assert len(keys) > 100  # the scan found the templates' and scripts' keys
    assert sorted(keys - set(i18n.catalogue(language))) == []


def test_every_key_built_from_a_prefix_is_covered() -> None:
    """A key built at run time (``t("nav." + page)``) must be one the scan adds above."""
    assert used_prefixes() == {"nav.", "lang.", "dead.status."}


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_key_is_used(language: str) -> None:
    """No dead entries: each catalogue key is used somewhere."""
    assert sorted(set(i18n.catalogue(language)) - used_keys()) == []


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_placeholders_match_between_languages(language: str) -> None:
    english = i18n.catalogue("en")
    for key, text in i18n.catalogue(language).items():
        assert set(re.findall(r"\{(\w+)\}", text)) == set(re.findall(r"\{(\w+)\}", english[key]))


@pytest.mark.parametrize(
    ("cookie", "header", "chosen"),
    [
        (None, None, "en"),
        (None, "fr-FR,fr;q=0.9", "fr"),
        (None, "ar-MA, fr;q=0.8, en;q=0.5", "fr"),
        (None, "en;q=0.3, fr;q=0.7", "fr"),
        (None, "de, es", "en"),
        (None, "fr;q=0", "en"),
        ("en", "fr", "en"),
        ("fr", "en", "fr"),
        ("xx", "fr", "fr"),
    ],
)
def test_the_language_is_the_cookie_then_accept_language(cookie, header, chosen) -> None:
    assert i18n.choose(cookie, header) == chosen


def test_an_unknown_catalogue_is_an_error() -> None:
    with pytest.raises(ValueError, match="no catalogue for language 'de'"):
        i18n.catalogue("de")
