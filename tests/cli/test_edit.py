"""Editing users and clients from the command line, as a subprocess against a real PostgreSQL.

Every edit goes through the host facade, so what is checked here with plain
SQL and through ``export`` is what the server's own events would have stored:
the fields a command names change, every other field stays as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from omejdn_pg.host.files.store import FileStore
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import ok, omejdn_pg, one_error_line
from tests.kits.witness import PlainSQL

SECRET = "s3cret-client-value"


@pytest.fixture
def url(database: ConnectionSettings) -> str:
    return database.conninfo()


@pytest.fixture
def client_file(tmp_path: Path) -> Path:
    path = tmp_path / "app.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "client_id": "app",
                "client_name": "The App",
                "token_endpoint_auth_method": "client_secret_basic",
                "client_secret": SECRET,
                "grant_types": ["authorization_code"],
                "redirect_uris": ["https://app.example/cb"],
                "scope": ["openid", "profile"],
                "logo_uri": "https://app.example/logo.png",
                "attributes": {"tier": "gold"},
            }
        )
    )
    return path


def metadata(plain_sql: PlainSQL, client_id: str = "app") -> dict[str, Any]:
    rows = plain_sql.rows("SELECT key, value FROM clients WHERE client_id = %s", (client_id,))
    return dict(rows)


def attributes(plain_sql: PlainSQL, kind: str, identifier: str) -> dict[str, Any]:
    rows = plain_sql.rows(
        "SELECT key, value FROM attributes WHERE type = %s AND identifier = %s", (kind, identifier)
    )
    return dict(rows)


def test_clients_update_keeps_what_it_does_not_name_and_exports(
    url: str, client_file: Path, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    ok(omejdn_pg("--url", url, "clients", "add", "-f", str(client_file)))
    before = metadata(plain_sql)

    updated = ok(
        omejdn_pg(
            "--url", url, "clients", "update", "app",
            "--set", "client_name=App 2: the sequel",
            "--set", "redirect_uris=[https://app.example/cb, https://app.example/cb2]",
            "--set", "default_max_age=3600",
            "--set", "require_auth_time=true",
            "--unset", "logo_uri",
        )
    )  # fmt: skip
    assert updated.stdout == "updated client app\n"
    after = metadata(plain_sql)
    assert after["client_name"] == "App 2: the sequel"
    assert after["redirect_uris"] == ["https://app.example/cb", "https://app.example/cb2"]
    assert after["default_max_age"] == 3600
    assert after["require_auth_time"] is True
    assert "logo_uri" not in after
    untouched = {k: v for k, v in before.items() if k not in ("client_name", "redirect_uris")}
    untouched.pop("logo_uri")
    assert {k: after[k] for k in untouched} == untouched  # client_secret among them
    assert after["client_secret"] == SECRET
    assert attributes(plain_sql, "client", "app") == {"tier": "gold"}

    same = ok(omejdn_pg("--url", url, "clients", "update", "app", "--set", "default_max_age=3600"))
    assert same.stdout == "client app unchanged\n"

    out = tmp_path / "exported"
    ok(omejdn_pg("--url", url, "export", str(out)))
    (exported,) = FileStore(out).read_section("clients")
    assert exported["client_name"] == "App 2: the sequel"
    assert exported["client_secret"] == SECRET
    assert exported["attributes"] == {"tier": "gold"}
    assert "logo_uri" not in exported


def test_clients_update_from_a_file_as_show_prints_it(
    url: str, client_file: Path, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    ok(omejdn_pg("--url", url, "clients", "add", "-f", str(client_file)))
    shown = ok(omejdn_pg("--url", url, "clients", "show", "app", "-o", "yaml")).stdout
    assert SECRET not in shown
    document = yaml.safe_load(shown)
    document["client_name"] = "Renamed"
    del document["logo_uri"]
    document["attributes"] = {"tier": "silver", "region": "eu"}
    edited = tmp_path / "edited.yml"
    edited.write_text(yaml.safe_dump(document))

    ok(omejdn_pg("--url", url, "clients", "update", "app", "-f", str(edited)))
    after = metadata(plain_sql)
    assert after["client_name"] == "Renamed"
    assert "logo_uri" not in after  # the file is the whole client
    assert after["client_secret"] == SECRET  # a masked secret keeps the stored one
    assert attributes(plain_sql, "client", "app") == {"tier": "silver", "region": "eu"}

    document["client_id"] = "other"
    edited.write_text(yaml.safe_dump(document))
    line = one_error_line(omejdn_pg("--url", url, "clients", "update", "app", "-f", str(edited)))
    assert "'other'" in line
    assert one_error_line(
        omejdn_pg("--url", url, "clients", "update", "app", "-f", str(edited), "--set", "a=1"),
        code=2,
    )
    assert "nothing to update" in one_error_line(
        omejdn_pg("--url", url, "clients", "update", "app"), code=2
    )
    assert "client_id" in one_error_line(
        omejdn_pg("--url", url, "clients", "update", "app", "--set", "client_id=x"), code=2
    )
    assert "no metadata field 'nope'" in one_error_line(
        omejdn_pg("--url", url, "clients", "update", "app", "--unset", "nope")
    )
    assert "no client 'ghost'" in one_error_line(
        omejdn_pg("--url", url, "clients", "update", "ghost", "--set", "a=1")
    )
    assert "token_endpoint_auth_method" in one_error_line(
        omejdn_pg(
            "--url", url, "clients", "update", "app", "--set", "token_endpoint_auth_method=magic"
        )
    )
    assert metadata(plain_sql)["client_name"] == "Renamed"


def test_clients_set_attr_and_rotate_secret(
    url: str, client_file: Path, plain_sql: PlainSQL
) -> None:
    ok(omejdn_pg("--url", url, "clients", "add", "-f", str(client_file)))
    ok(omejdn_pg("--url", url, "clients", "set-attr", "app", "region", "eu"))
    ok(omejdn_pg("--url", url, "clients", "set-attr", "app", "limits", "[1, 2]", "--json-value"))
    ok(omejdn_pg("--url", url, "clients", "set-attr", "app", "tier", "--unset"))
    assert attributes(plain_sql, "client", "app") == {"region": "eu", "limits": [1, 2]}
    assert "no attribute 'tier'" in one_error_line(
        omejdn_pg("--url", url, "clients", "set-attr", "app", "tier", "--unset")
    )

    rotated = ok(omejdn_pg("--url", url, "clients", "rotate-secret", "app"))
    secret = rotated.stdout.strip()
    assert len(secret) >= 43
    assert rotated.stdout == secret + "\n"  # the secret alone: SECRET=$(omejdn-pg ...)
    assert secret not in rotated.stderr
    assert metadata(plain_sql)["client_secret"] == secret
    assert metadata(plain_sql)["client_name"] == "The App"
    for command in (["show", "app"], ["list"], ["show", "app", "--json"], ["list", "-o", "yaml"]):
        assert secret not in ok(omejdn_pg("--url", url, "clients", *command)).stdout
    assert secret in ok(omejdn_pg("--url", url, "clients", "show", "app", "--show-secrets")).stdout

    as_json = json.loads(
        ok(omejdn_pg("--url", url, "clients", "rotate-secret", "app", "-o", "json")).stdout
    )
    assert as_json["client_id"] == "app"
    assert as_json["client_secret"] not in (secret, SECRET)
    assert metadata(plain_sql)["client_secret"] == as_json["client_secret"]

    ok(omejdn_pg("--url", url, "clients", "add", "public", "--auth-method", "none"))
    line = one_error_line(omejdn_pg("--url", url, "clients", "rotate-secret", "public"))
    assert "does not authenticate with a client_secret" in line
    assert "client_secret" not in metadata(plain_sql, "public")


def test_bulk_delete_with_one_confirmation(url: str, plain_sql: PlainSQL) -> None:
    for name in ("a", "b", "c", "d"):
        ok(omejdn_pg("--url", url, "users", "add", name, "--extern", "ldap", "-a", "x=1"))
    for client in ("c1", "c2", "c3"):
        ok(omejdn_pg("--url", url, "clients", "add", client))

    dry = ok(omejdn_pg("--url", url, "users", "delete", "a", "b", "--dry-run"))
    assert dry.stdout == "would delete user a\nwould delete user b\n"
    missing = one_error_line(omejdn_pg("--url", url, "users", "delete", "a", "zz", "--yes"))
    assert "no user 'zz'; nothing deleted" in missing
    assert plain_sql.value("SELECT count(*) FROM users") == 4
    refused = one_error_line(omejdn_pg("--url", url, "users", "delete", "a", "b", "c"))
    assert "Delete 3 users (a, b, c)" in refused
    assert "--yes" in refused

    done = ok(omejdn_pg("--url", url, "users", "delete", "a", "b", "c", "a", "--yes"))
    assert done.stdout == "deleted user a\ndeleted user b\ndeleted user c\n"
    assert plain_sql.rows("SELECT username FROM users") == [("d",)]
    assert plain_sql.rows("SELECT DISTINCT identifier FROM attributes") == [("d",)]

    ok(omejdn_pg("--url", url, "clients", "delete", "c1", "c3", "--dry-run"))
    assert plain_sql.value("SELECT count(DISTINCT client_id) FROM clients") == 3
    ok(omejdn_pg("--url", url, "clients", "delete", "c1", "c3", "--yes"))
    assert plain_sql.rows("SELECT DISTINCT client_id FROM clients") == [("c2",)]
    assert one_error_line(omejdn_pg("--url", url, "users", "delete"), code=2)


def test_users_update_and_consent(url: str, plain_sql: PlainSQL) -> None:
    ok(omejdn_pg("--url", url, "users", "add", "eve", "--password-stdin", "-a", "email=e@x",
                 "-a", "locale=de", input="pw\n"))  # fmt: skip
    hashed = plain_sql.value("SELECT password FROM users WHERE username = 'eve'")
    plain_sql.execute(
        """UPDATE users SET consent = '{"app": ["openid"], "other": ["openid", "email"]}'"""
    )

    ok(
        omejdn_pg(
            "--url", url, "users", "update", "eve",
            "--set-attr", "tier=3", "--set-attr", "tags=[a, b]", "--set-attr", "note=x: y",
            "--unset-attr", "locale", "--extern", "https://idp.example",
        )
    )  # fmt: skip
    assert attributes(plain_sql, "user", "eve") == {
        "email": "e@x",
        "tier": 3,
        "tags": ["a", "b"],
        "note": "x: y",
    }
    row = plain_sql.rows("SELECT password, extern FROM users WHERE username = 'eve'")
    assert row == [(hashed, "https://idp.example")]  # the password hash is untouched
    ok(omejdn_pg("--url", url, "users", "update", "eve", "--no-extern"))
    assert plain_sql.value("SELECT extern FROM users WHERE username = 'eve'") is None
    same = ok(omejdn_pg("--url", url, "users", "update", "eve", "--set-attr", "tier=3"))
    assert same.stdout == "user eve unchanged\n"
    assert one_error_line(
        omejdn_pg("--url", url, "users", "update", "eve", "--extern", "x", "--no-extern"), code=2
    )
    assert "no attribute 'nope'" in one_error_line(
        omejdn_pg("--url", url, "users", "update", "eve", "--unset-attr", "nope")
    )

    listed = ok(omejdn_pg("--url", url, "users", "consent", "list", "eve"))
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows == [["CLIENT_ID", "SCOPES"], ["app", "openid"], ["other", "openid", "email"]]
    assert "2 consent(s) of eve" in listed.stderr
    as_json = json.loads(
        ok(omejdn_pg("--url", url, "users", "consent", "list", "eve", "--json")).stdout
    )
    assert as_json == [
        {"client_id": "app", "scopes": ["openid"]},
        {"client_id": "other", "scopes": ["openid", "email"]},
    ]
    ok(omejdn_pg("--url", url, "users", "consent", "revoke", "eve", "app"))
    assert plain_sql.value("SELECT consent FROM users") == {"other": ["openid", "email"]}
    assert "no consent for client 'app'" in one_error_line(
        omejdn_pg("--url", url, "users", "consent", "revoke", "eve", "app")
    )
    assert one_error_line(omejdn_pg("--url", url, "users", "consent", "revoke", "eve"), code=2)
    ok(omejdn_pg("--url", url, "users", "consent", "revoke", "eve", "--all"))
    assert plain_sql.value("SELECT consent FROM users") == {}
    assert attributes(plain_sql, "user", "eve")["tier"] == 3
