"""The console session: signed with a key derived from the API token, expiring, never forged."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from broker.access import SESSION_TTL_S, open_session, read_session, token_matches
from broker.settings import Settings

TOKEN = SecretStr("synthetic-console-token")


def settings(token: SecretStr | None = TOKEN) -> Settings:
    return Settings(api_token=token)


def test_a_session_reads_back_with_its_csrf_token() -> None:
    session, cookie = open_session(settings(), now=1000.0)
    read = read_session(settings(), cookie, now=1001.0)
    assert read == session
    assert read is not None
    assert read.csrf_matches(session.csrf)
    assert not read.csrf_matches("something-else")
    assert not read.csrf_matches(None)


def test_the_cookie_names_no_token() -> None:
    _, cookie = open_session(settings())
    assert TOKEN.get_secret_value() not in cookie


def test_a_session_expires() -> None:
    _, cookie = open_session(settings(), now=1000.0)
    assert read_session(settings(), cookie, now=1000.0 + SESSION_TTL_S - 1) is not None
    assert read_session(settings(), cookie, now=1000.0 + SESSION_TTL_S) is None


def test_a_changed_token_ends_every_session() -> None:
    _, cookie = open_session(settings())
    assert read_session(settings(SecretStr("another-token")), cookie) is None
    assert read_session(settings(None), cookie) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda c: c.replace(".", ".x", 1),
        lambda c: "e30=." + c.rpartition(".")[2],  # another payload ({}), the same signature
        lambda c: c.rpartition(".")[0],
        lambda c: "",
        lambda c: "no-dot-here",
    ],
    ids=["signature", "payload", "unsigned", "empty", "garbage"],
)
def test_a_forged_cookie_is_no_session(tamper) -> None:
    _, cookie = open_session(settings())
    assert read_session(settings(), tamper(cookie)) is None


def test_token_matches_only_the_configured_token() -> None:
    assert token_matches(settings(), TOKEN.get_secret_value())
    assert not token_matches(settings(), "wrong")
    assert not token_matches(settings(None), "")
    assert not token_matches(settings(SecretStr("")), "")


def test_no_session_without_a_token() -> None:
    with pytest.raises(ValueError, match="no API token"):
        open_session(settings(None))
