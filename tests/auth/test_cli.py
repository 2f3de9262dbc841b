"""``passerelle users ...`` and ``passerelle tokens ...`` on SQLite and PostgreSQL (in-process)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from broker.access import Authenticator, CredentialRefused
from broker.settings import Settings
from broker.store.schema import tokens
from broker.testing import CliRun, run_cli

Env = dict[str, str | None]


@pytest.fixture(name="env")
def fixture_env(tmp_path: Path, store_url: str, engine: sa.Engine) -> Env:
    """Settings of the commands: the test's store (upgraded), every other PASSERELLE_ unset."""
    env: Env = {k: None for k in os.environ if k.startswith("PASSERELLE_")}
    env.update(PASSERELLE_STORE_URL=store_url, PASSERELLE_DATA_DIR=str(tmp_path / "var"))
    return env


def cli(env: Env, *args: str) -> CliRun:
    return run_cli(*args, env=env)


def ok(run: CliRun) -> CliRun:
    assert run.code == 0, run.stderr
    return run


def test_add_list_disable_enable_users(env: Env) -> None:
    added = ok(cli(env, "users", "add", "amina.benali", "--role", "operator"))
    assert "added amina.benali (operator)" in added.stdout
    ok(cli(env, "users", "add", "labo-casa", "--role", "sender", "--adapter", "labo-casa-oru"))
    listed = json.loads(ok(cli(env, "users", "list", "--json")).stdout)
    assert [(u["name"], u["role"], u["adapter"], u["active"]) for u in listed] == [
        ("amina.benali", "operator", None, True),
        ("labo-casa", "sender", "labo-casa-oru", True),
    ]
    disabled = ok(cli(env, "users", "disable", "amina.benali"))
    assert "refused within 5 s" in disabled.stdout
    text = ok(cli(env, "users", "list")).stdout
    assert "amina.benali  operator  -  disabled  0 token(s)" in text
    ok(cli(env, "users", "enable", "amina.benali"))
    assert json.loads(ok(cli(env, "users", "list", "--json")).stdout)[0]["active"] is True


def test_users_add_refuses_with_one_line(env: Env) -> None:
    for args, code, reason in (
        (("users", "add", "x"), 2, "--role is required"),
        (("users", "add", "labo", "--role", "sender"), 1, "give --adapter"),
        (("users", "add", "x", "--role", "root"), 1, "unknown role 'root'"),
        (("users", "disable", "nobody"), 1, "no user 'nobody'"),
    ):
        run = cli(env, *args)
        assert run.code == code
        assert run.stderr.startswith("passerelle: ")
        assert reason in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


def test_tokens_create_prints_the_token_once_and_it_works(
    env: Env, store_url: str, engine: sa.Engine
) -> None:
    ok(cli(env, "users", "add", "amina.benali", "--role", "operator"))
    run = ok(cli(env, "tokens", "create", "amina.benali", "--expires", "30d", "--label", "laptop"))
    token = run.stdout.strip()
    assert token.startswith("pas_")
    assert len(run.stdout.strip().splitlines()) == 1  # stdout: the token alone
    assert "not shown again" in run.stderr
    settings = Settings(store_url=store_url, api_token=SecretStr("bootstrap-for-the-test"))
    checker = Authenticator(settings)
    assert checker.bearer(token).role == "operator"
    listed = ok(cli(env, "tokens", "list")).stdout
    assert token not in listed
    assert "amina.benali  operator  expires " in listed
    assert "laptop" in listed
    with engine.connect() as connection:
        assert token not in repr(connection.execute(sa.select(tokens)).all())
    checker.close()


def test_tokens_create_adds_a_sender_with_role_and_adapter_in_json(env: Env) -> None:
    created = json.loads(
        ok(
            cli(
                env,
                "tokens",
                "create",
                "labo-casa",
                "--role",
                "sender",
                "--adapter",
                "labo-casa-oru",
                "--expires",
                "never",
                "--json",
            )
        ).stdout
    )
    assert created["token"].startswith(f"pas_{created['id']}_")
    assert (created["user"], created["role"], created["adapter"]) == (
        "labo-casa",
        "sender",
        "labo-casa-oru",
    )
    assert created["expires_at"] is None
    users = json.loads(ok(cli(env, "users", "list", "--json")).stdout)
    assert [(u["name"], u["tokens"]) for u in users] == [("labo-casa", 1)]


def test_tokens_create_narrows_and_refuses(env: Env) -> None:
    ok(cli(env, "users", "add", "prometheus", "--role", "auditor"))
    made = json.loads(
        ok(
            cli(env, "tokens", "create", "prometheus", "--permissions", "overview.read", "--json")
        ).stdout
    )
    assert made["permissions"] == ["overview.read"]
    for args, code, reason in (
        (("tokens", "create", "nobody"), 1, "give --role"),
        (("tokens", "create", "prometheus", "--role", "admin"), 1, "has the role auditor"),
        (("tokens", "create", "prometheus", "--expires", "soon"), 2, "is not a duration"),
        (
            ("tokens", "create", "prometheus", "--permissions", "messages.replay"),
            1,
            "does not hold 'messages.replay'",
        ),
    ):
        run = cli(env, *args)
        assert (run.code, run.stdout) == (code, "")
        assert reason in run.stderr


def test_tokens_revoke_then_the_token_is_refused(env: Env, store_url: str) -> None:
    made = json.loads(
        ok(cli(env, "tokens", "create", "amina", "--role", "operator", "--json")).stdout
    )
    revoked = ok(cli(env, "tokens", "revoke", made["id"]))
    assert f"revoked {made['id']} (amina)" in revoked.stdout
    checker = Authenticator(Settings(store_url=store_url, api_token=SecretStr("b")))
    with pytest.raises(CredentialRefused, match="revoked"):
        checker.bearer(made["token"])
    checker.close()
    assert ok(cli(env, "tokens", "list")).stdout == ""
    again = json.loads(ok(cli(env, "tokens", "list", "--revoked", "--json")).stdout)
    assert [(t["id"], t["revoked_by"]) for t in again] == [(made["id"], again[0]["revoked_by"])]
    assert again[0]["revoked_by"].startswith("cli")
    assert again[0]["revoked_at"].endswith("Z")
    missing = cli(env, "tokens", "revoke", "0123456789ab")
    assert (missing.code, "no token 0123456789ab" in missing.stderr) == (1, True)


def test_a_store_without_schema_says_what_to_run(tmp_path: Path) -> None:
    env: Env = {k: None for k in os.environ if k.startswith("PASSERELLE_")}
    env["PASSERELLE_DATA_DIR"] = str(tmp_path)
    run = run_cli("users", "list", env=env)
    assert run.code == 1
    assert "passerelle store" in run.stderr


PASSWORD = "Tajine aux olives 2026"


def _checker(store_url: str) -> Authenticator:
    return Authenticator(Settings(store_url=store_url, api_token=SecretStr("bootstrap-for-test")))


def test_users_passwd_reads_the_password_from_stdin(env: Env, store_url: str) -> None:
    ok(cli(env, "users", "add", "amina.benali", "--role", "operator"))
    run = ok(
        run_cli(
            "users", "passwd", "amina.benali", "--password-stdin", env=env, input=PASSWORD + "\n"
        )
    )
    assert "password of amina.benali set" in run.stdout
    assert PASSWORD not in run.stdout + run.stderr
    assert _checker(store_url).password("amina.benali", PASSWORD).role == "operator"
    assert (
        "amina.benali  operator  -  active  0 token(s)  password"
        in ok(cli(env, "users", "list")).stdout
    )


def test_users_passwd_asks_twice_without_echo(env: Env, store_url: str) -> None:
    ok(cli(env, "users", "add", "amina.benali", "--role", "operator"))
    run = ok(run_cli("users", "passwd", "amina.benali", env=env, input=f"{PASSWORD}\n{PASSWORD}\n"))
    assert PASSWORD not in run.stdout + run.stderr  # asked, never echoed
    assert _checker(store_url).password("amina.benali", PASSWORD).who == "amina.benali"
    differ = run_cli(
        "users", "passwd", "amina.benali", env=env, input=f"{PASSWORD}\nautre chose 12\n"
    )
    assert differ.code == 1
    assert "the two passwords differ" in differ.stderr
    with pytest.raises(CredentialRefused, match="wrong password"):
        _checker(store_url).password("amina.benali", "autre chose 12")


def test_users_passwd_refuses_with_one_line(env: Env) -> None:
    ok(cli(env, "users", "add", "amina.benali", "--role", "operator"))
    ok(cli(env, "users", "add", "labo-casa", "--role", "sender", "--adapter", "labo-casa-oru"))
    for name, given, code, reason in (
        ("amina.benali", "court\n", 1, "at least 12 characters"),
        ("amina.benali", "amina.benali-2026\n", 1, "the user's name"),
        ("labo-casa", PASSWORD + "\n", 1, "uses its token, never a password"),
        ("nobody", PASSWORD + "\n", 1, "no user 'nobody'"),
        ("amina.benali", "", 2, "standard input is empty"),
    ):
        run = run_cli("users", "passwd", name, "--password-stdin", env=env, input=given)
        assert run.code == code, run.stderr
        assert reason in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
        assert given.strip() == "" or given.strip() not in run.stderr


def test_a_password_is_never_an_argument(env: Env) -> None:
    run = cli(env, "users", "passwd", "amina.benali", PASSWORD)
    assert run.code == 2
