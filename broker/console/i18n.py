"""The console's two languages: one catalogue per language, chosen per browser.

Every string the console shows comes from ``catalogues/<language>.json`` (a flat key → text
dict, the same keys in each; ``tests/console/test_i18n.py`` checks it and that every key a
template or script uses exists). The language is the ``passerelle_lang`` cookie the switch sets,
else the best of the browser's ``Accept-Language``, else English.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

__all__ = ["COOKIE", "DEFAULT", "LANGUAGES", "catalogue", "choose"]

LANGUAGES = ("en", "fr")
DEFAULT = "en"
COOKIE = "passerelle_lang"
CATALOGUES = Path(__file__).parent / "catalogues"


@cache
def catalogue(language: str) -> dict[str, str]:
    """The key → text catalogue of one of :data:`LANGUAGES`."""
    if language not in LANGUAGES:
        msg = f"no catalogue for language {language!r} (have {', '.join(LANGUAGES)})"
        raise ValueError(msg)
    text = (CATALOGUES / f"{language}.json").read_text(encoding="utf-8")
    loaded: dict[str, str] = json.loads(text)
    return loaded


def _accepted(header: str) -> list[str]:
    """The primary language tags of an ``Accept-Language`` header, most wanted first."""
    weighted = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            weighted.append((-quality, position, tag.split("-")[0].lower()))
    return [tag for _, _, tag in sorted(weighted)]


def choose(cookie: str | None, accept_language: str | None) -> str:
    """The language to show: the switch's cookie, else ``Accept-Language``, else English."""
    if cookie is not None and cookie in LANGUAGES:
        return cookie
    for tag in _accepted(accept_language or ""):
        if tag in LANGUAGES:
            return tag
    return DEFAULT
