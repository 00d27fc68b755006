"""The key lifecycle, sealing, least privilege and password hygiene from the command line,
as a subprocess against a real PostgreSQL."""

from __future__ import annotations

import json

import pytest

from omejdn_pg.sealing import generate_secret, sealed_by
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import ok, omejdn_pg, one_error_line
from tests.kits.witness import PlainSQL
from tests.secrets import watch

OMEJDN_HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"  # "mypassword"


@pytest.fixture
def url(database: ConnectionSettings) -> str:
    return database.conninfo()


def listed(url: str, *args: str) -> list[dict[str, object]]:
    return list(json.loads(ok(omejdn_pg("--url", url, "keys", "list", *args, "--json")).stdout))


def test_rotate_maintain_activate_retire_delete(url: str, plain_sql: PlainSQL) -> None:
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "omejdn", "--ec", "P-256"))
    (first,) = listed(url)
    assert (first["state"], first["alg"], first["private"]) == ("active", "ES256", True)

    rotated = ok(omejdn_pg("--url", url, "keys", "rotate", "omejdn", "omejdn"))
    assert "is next, signs from" in rotated.stdout
    keys = {k["kid"]: k for k in listed(url)}
    (second_kid,) = [kid for kid in keys if kid != first["kid"]]
    assert keys[second_kid]["state"] == "next"
    assert keys[second_kid]["alg"] == "ES256"  # the signer's algorithm by default
    assert keys[second_kid]["activate_at"] is not None
    jwks = json.loads(ok(omejdn_pg("--url", url, "keys", "jwks")).stdout)
    assert sorted(k["kid"] for k in jwks["keys"]) == sorted(keys)  # the next key is published
    assert all("d" not in k for k in jwks["keys"])
    refused = omejdn_pg("--url", url, "keys", "rotate", "omejdn", "omejdn")
    assert "already waiting" in one_error_line(refused)

    # Nothing is due yet: maintain changes nothing, from any number of runs.
    maintained = ok(omejdn_pg("--url", url, "keys", "maintain"))
    assert maintained.stdout == ""
    assert "0 change(s)" in maintained.stderr

    early = omejdn_pg("--url", url, "keys", "activate", "--", "omejdn", "omejdn", second_kid)
    assert "publish window" in one_error_line(early)
    forced = ok(
        omejdn_pg("--url", url, "keys", "activate", "--force", "--", "omejdn", "omejdn", second_kid)
    )
    assert "reject its tokens" in forced.stderr
    states = {k["kid"]: k["state"] for k in listed(url)}
    assert states == {second_kid: "active", first["kid"]: "retired"}
    assert plain_sql.value("SELECT kid FROM keys WHERE type = 'sk'") == second_kid

    refused = omejdn_pg("--url", url, "keys", "retire", "--", "omejdn", "omejdn", second_kid)
    assert "only active signing key" in one_error_line(refused)
    ok(omejdn_pg("--url", url, "keys", "delete", "--yes", "--", "omejdn", "omejdn", first["kid"]))
    assert [k["kid"] for k in listed(url)] == [second_kid]

    # A rotation with no publish window is due at once: maintain activates it and
    # retires the signer, whatever the families.
    ok(
        omejdn_pg(
            "--url",
            url,
            "keys",
            "rotate",
            "omejdn",
            "omejdn",
            "--alg",
            "ES256",
            "--publish-for",
            "0s",
        )
    )
    maintained = ok(omejdn_pg("--url", url, "keys", "maintain"))
    assert "activated" in maintained.stdout
    assert "retired" in maintained.stdout
    table = ok(omejdn_pg("--url", url, "keys", "list")).stdout
    assert "active" in table
    assert "retired" in table
    bad = omejdn_pg("--url", url, "keys", "rotate", "omejdn", "omejdn", "--publish-for", "soon")
    assert "--publish-for" in one_error_line(bad, code=2)


def test_rewrap_under_a_new_key_encryption_key(
    database: ConnectionSettings, plain_sql: PlainSQL, tmp_path: object
) -> None:
    old, new = watch(generate_secret()), watch(generate_secret())
    path = __import__("pathlib").Path(str(tmp_path)) / "plugins.yml"

    def configure(*ids: str) -> None:
        entries = ", ".join(f"{{id: {i}, env: KEK_{i.upper()}}}" for i in ids)
        lines = "".join(f"         {k}: '{v}'\n" for k, v in database.params.items())
        path.write_text(
            "plugins:\n   postgres_backend:\n      connection:\n"
            f"{lines}      key_encryption: [{entries}]\n"
            "deactivate_defaults: [config, keys, client, user]\n"
        )

    env = {"KEK_OLD": old, "KEK_NEW": new}
    configure("old")
    ok(omejdn_pg("--config", str(path), "keys", "generate", "omejdn", "omejdn", env=env))
    assert sealed_by(plain_sql.value("SELECT value FROM keys")) == "old"
    configure("new", "old")
    check = json.loads(
        ok(omejdn_pg("--config", str(path), "keys", "rewrap", "--check", "--json", env=env)).stdout
    )
    assert check == {"old": 1}
    ok(omejdn_pg("--config", str(path), "keys", "rewrap", env=env))
    assert sealed_by(plain_sql.value("SELECT value FROM keys")) == "new"
    configure("new")
    assert "ES256" not in ok(omejdn_pg("--config", str(path), "keys", "list", env=env)).stdout
    # Listing needs no KEK; a command that opens or seals a private key does.
    ok(omejdn_pg("--config", str(path), "keys", "list", env={"KEK_OLD": old}))
    missing = omejdn_pg(
        "--config", str(path), "keys", "rotate", "omejdn", "omejdn", env={"KEK_OLD": old}
    )
    line = one_error_line(missing)
    assert "KEK_NEW is not set" in line
    assert old not in line


def test_migrate_grant_and_config_create(
    database: ConnectionSettings, app_role: str, plain_sql: PlainSQL
) -> None:
    plain_sql.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    owner = database.conninfo()
    granted = ok(omejdn_pg("--url", owner, "migrate", "--grant", app_role))
    assert f"{app_role} may read and write" in granted.stdout
    app = database.with_params(user=app_role).conninfo()
    refused = omejdn_pg("--url", app, "config", "set", "branding", "-", input='{"logo": "x"}')
    assert "omejdn-pg config create branding" in one_error_line(refused)
    created = ok(omejdn_pg("--url", owner, "config", "create", "branding"))
    assert "created" in created.stdout
    ok(omejdn_pg("--url", app, "config", "set", "branding", "-", input='{"logo": "x"}'))
    got = ok(omejdn_pg("--url", app, "config", "get", "branding", "-o", "json")).stdout
    assert json.loads(got) == {"logo": "x"}


def test_hash_report_and_external_users(url: str, plain_sql: PlainSQL) -> None:
    plain_sql.execute(
        "INSERT INTO users (username, password) VALUES ('alice', %s), ('bob', %s)",
        (OMEJDN_HASH, OMEJDN_HASH.replace("$12$", "$04$")),
    )
    plain_sql.execute("INSERT INTO users (username, extern) VALUES ('carol', 'ldap')")
    report = ok(omejdn_pg("--url", url, "users", "hash-report")).stdout
    assert "bcrypt cost 12: 1" in report
    assert "bcrypt cost 4: 1" in report
    assert "none: 1" in report
    assert "1 of 3 (33%) upgraded at their next login" in report
    assert OMEJDN_HASH not in report
    as_json = json.loads(ok(omejdn_pg("--url", url, "users", "hash-report", "--json")).stdout)
    assert as_json["total"] == 3

    refused = omejdn_pg(
        "--url", url, "users", "passwd", "carol", "--password-stdin", input="a-new-password\n"
    )
    assert "external user" in one_error_line(refused)
    assert plain_sql.value("SELECT password FROM users WHERE username = 'carol'") is None
    ok(
        omejdn_pg(
            "--url",
            url,
            "users",
            "passwd",
            "carol",
            "--password-stdin",
            "--force",
            input="a-new-password\n",
        )
    )
    assert plain_sql.value("SELECT password FROM users WHERE username = 'carol'") is not None
