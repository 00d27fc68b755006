"""``omejdn-pg`` driven as an operator drives it: a subprocess, its output and exit status.

Every failure must be one ``error: ...`` line on stderr with a non-zero exit,
must never show a password, and must leave the database untouched (checked
with plain SQL).
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from omejdn_pg.cli import app as cli
from omejdn_pg.entities import KeyMaterial
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database import unit_of_work
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import ok, omejdn_pg, one_error_line


@pytest.fixture
def url(database: ConnectionSettings) -> str:
    return database.conninfo()


def table_counts(plain_sql: Any) -> tuple[int, int, int, int]:
    return (
        plain_sql.value("SELECT count(*) FROM users"),
        plain_sql.value("SELECT count(*) FROM clients"),
        plain_sql.value("SELECT count(*) FROM keys"),
        plain_sql.value("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'configuration\\_%'"),
    )


# --- the command tree ------------------------------------------------------------


def all_command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]

    def walk(group: click.Group, prefix: list[str]) -> None:
        ctx = click.Context(group, info_name=prefix[-1] if prefix else "omejdn-pg")
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            assert command is not None, name
            paths.append([*prefix, name])
            if isinstance(command, click.Group):
                walk(command, [*prefix, name])

    walk(cli.cli, [])
    return paths


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "omejdn-pg")
def test_every_command_has_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run([*path, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: omejdn-pg")


def test_console_script_and_module_agree() -> None:
    script = shutil.which("omejdn-pg", path=str(Path(sys.executable).parent))
    assert script is not None
    by_script = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    by_module = ok(omejdn_pg("--help"))
    assert by_script.stdout == by_module.stdout


def test_usage_errors_exit_with_2() -> None:
    result = omejdn_pg("users", "frobnicate")
    line = one_error_line(result, code=2)
    assert "frobnicate" in line
    one_error_line(omejdn_pg("--url", "postgresql://x", "import"), code=2)


def test_listings_offer_json(url: str) -> None:
    for listing in (
        ["users", "list"],
        ["clients", "list"],
        ["config", "list"],
        ["keys", "list"],
        ["migrate", "history"],
        ["check"],
    ):
        result = ok(omejdn_pg("--url", url, *listing, "--json"))
        json.loads(result.stdout)


# --- import / export ---------------------------------------------------------------


def test_import_export_round_trip(url: str, examples: Path, tmp_path: Path, plain_sql: Any) -> None:
    first = ok(omejdn_pg("--url", url, "import", str(examples)))
    # 4 users, 5 clients (their keys with them), 4 sections, the omejdn key target
    assert "14 change(s) written" in first.stdout
    assert plain_sql.value("SELECT count(*) FROM users") == 4
    assert plain_sql.value("SELECT count(DISTINCT client_id) FROM clients") == 5
    assert plain_sql.value("SELECT count(*) FROM keys") == 5

    second = ok(omejdn_pg("--url", url, "import", str(examples), "--json"))
    summary = json.loads(second.stdout)
    assert summary["changes"] == []
    assert summary["counts"]["users"] == {"create": 0, "update": 0, "unchanged": 4}
    human = ok(omejdn_pg("--url", url, "import", str(examples)))
    assert "nothing changed" in human.stdout

    out = tmp_path / "exported"
    ok(omejdn_pg("--url", url, "export", str(out)))
    a, b = FileStore(examples), FileStore(out)
    assert a.sections() == b.sections()
    for section in a.sections():
        left, right = a.read_section(section), b.read_section(section)
        if section in ("users", "clients"):
            key = "username" if section == "users" else "client_id"
            left, right = sorted(left, key=lambda x: x[key]), sorted(right, key=lambda x: x[key])
        assert left == right, section
    assert a.key_targets() == b.key_targets()
    for target in a.key_targets():
        assert a.load_key(*target) == b.load_key(*target)
    for key_file in out.glob("keys/**/*.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    again = omejdn_pg("--url", url, "export", str(out))
    assert "not empty" in one_error_line(again)


def test_import_dry_run(url: str, examples: Path, plain_sql: Any) -> None:
    result = ok(omejdn_pg("--url", url, "import", "--dry-run", "-v", str(examples)))
    assert "would create users alice" in result.stdout
    assert "dry run" in result.stdout
    assert table_counts(plain_sql) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("relative", "content", "expected"),
    [
        ("config/users.yml", "- username: a\n  attributes: {x: [1, 2}\n", "users.yml: line 2"),
        ("config/Bad-Name.yml", "a: 1\n", "invalid configuration section name"),
        ("keys/omejdn/omejdn.key", "-----BEGIN PRIVATE KEY-----\nbroken\n", "omejdn.key"),
        ("keys/clients/spa-frontend.cert", "not a certificate\n", "spa-frontend.cert"),
    ],
    ids=["malformed-yaml", "bad-section-name", "bad-pem-key", "bad-pem-cert"],
)
def test_import_bad_input(
    url: str, examples: Path, plain_sql: Any, relative: str, content: str, expected: str
) -> None:
    (examples / relative).write_text(content)

    line = one_error_line(omejdn_pg("--url", url, "import", str(examples)))

    assert expected in line
    assert str(examples) in line
    assert table_counts(plain_sql) == (0, 0, 0, 0)


def test_import_missing_directory(url: str, tmp_path: Path, plain_sql: Any) -> None:
    line = one_error_line(omejdn_pg("--url", url, "import", str(tmp_path / "nowhere")))
    assert "nowhere: no such directory" in line
    assert table_counts(plain_sql) == (0, 0, 0, 0)


# --- connection failures -----------------------------------------------------------


def test_unreachable_host_never_shows_the_password(tmp_path: Path, examples: Path) -> None:
    secret = "S3cret-Pw-42"
    url = f"postgresql://omejdn:{secret}@127.0.0.1:1/omejdn?connect_timeout=5"
    for command in (
        ["users", "list"],
        ["import", str(examples)],
        ["check"],
        ["migrate", "upgrade"],
    ):
        result = omejdn_pg("--url", url, *command)
        line = one_error_line(result)
        assert "127.0.0.1" in line, line
        assert secret not in result.stdout + result.stderr


def test_missing_database(database: ConnectionSettings, tmp_path: Path) -> None:
    secret = "An0ther-Secret"
    settings = database.with_params(dbname="omejdn_pg_no_such_database", password=secret)
    result = omejdn_pg("--url", settings.conninfo(), "users", "list")
    line = one_error_line(result)
    assert "omejdn_pg_no_such_database" in line
    assert secret not in result.stdout + result.stderr
    # the same through a plugin file
    plugin = tmp_path / "plugins.yml"
    plugin.write_text(
        yaml.safe_dump({"plugins": {"postgres_backend": {"connection": dict(settings.params)}}})
    )
    result = omejdn_pg("--config", str(plugin), "clients", "list")
    one_error_line(result)
    assert secret not in result.stdout + result.stderr


def test_wrong_password_is_one_line_without_it(
    password_server: ConnectionSettings, examples: Path
) -> None:
    secret = "Wr0ng-Password"
    url = password_server.with_params(password=secret).conninfo()
    for command in (["users", "list"], ["import", str(examples)], ["check"]):
        result = omejdn_pg("--url", url, *command)
        line = one_error_line(result)
        assert "authentication failed for user" in line, line
        assert secret not in result.stdout + result.stderr
    right = omejdn_pg("--url", password_server.conninfo(), "migrate", "current")
    assert right.returncode == 0, right.stderr


def test_schema_behind_is_reported(empty_database: ConnectionSettings) -> None:
    url = empty_database.conninfo()
    check = omejdn_pg("--url", url, "check")
    assert "migrate" in one_error_line(check)
    assert "migrate" in one_error_line(omejdn_pg("--url", url, "users", "list"))


def test_plugin_files_configure_the_connection(
    database: ConnectionSettings, tmp_path: Path, plain_sql: Any
) -> None:
    base = tmp_path / "base.yml"
    base.write_text(yaml.safe_dump({"plugins": {"postgres_backend": {"connection": {}}}}))
    override = tmp_path / "override.yml"
    override.write_text(
        yaml.safe_dump({"plugins": {"postgres_backend": {"connection": dict(database.params)}}})
    )
    stdin = "pw-from-stdin\n"
    ok(
        omejdn_pg(
            "users",
            "add",
            "frank",
            "--password-stdin",
            input=stdin,
            env={"OMEJDN_PLUGINS": f"{base}:{override}"},
        )
    )
    ok(omejdn_pg("--config", f"{base}:{override}", "users", "show", "frank"))
    assert plain_sql.value("SELECT count(*) FROM users") == 1

    bad = tmp_path / "bad.yml"
    bad.write_text("plugins:\n  postgres_backend:\n    handlers: [usr]\n")
    assert "usr" in one_error_line(omejdn_pg("--config", str(bad), "users", "list"))


# --- migrate and check -------------------------------------------------------------


def test_migrate_up_and_down(empty_database: ConnectionSettings) -> None:
    url = empty_database.conninfo()
    assert ok(omejdn_pg("--url", url, "migrate", "current")).stdout.strip() == ""
    history = json.loads(ok(omejdn_pg("migrate", "history", "--json")).stdout)
    head = next(entry["revision"] for entry in history if entry["head"])

    assert "upgraded" in ok(omejdn_pg("--url", url, "migrate", "upgrade")).stdout
    assert ok(omejdn_pg("--url", url, "migrate", "current")).stdout.strip() == head
    assert "nothing to do" in ok(omejdn_pg("--url", url, "migrate", "upgrade")).stdout
    report = json.loads(ok(omejdn_pg("--url", url, "check", "--json")).stdout)
    assert report["ok"]
    assert report["revision"] == head
    assert report["pending"] == []
    assert report["rows"]["users"] == 0

    refused = omejdn_pg("--url", url, "migrate", "downgrade", "base")
    assert "--yes" in one_error_line(refused)
    ok(omejdn_pg("--url", url, "migrate", "downgrade", "base", "--yes"))
    assert ok(omejdn_pg("--url", url, "migrate", "current")).stdout.strip() == ""
    assert "nope" in one_error_line(omejdn_pg("--url", url, "migrate", "upgrade", "nope"))


def test_migrate_and_check_open_one_engine_per_command(
    empty_database: ConnectionSettings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Current revision, upgrade and current again share one engine and connection."""
    engines: list[Any] = []
    original = unit_of_work.build_engine

    def counting(*args: Any, **kwargs: Any) -> Any:
        engines.append(original(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(unit_of_work, "build_engine", counting)
    for name in ("OMEJDN_PG_URL", "OMEJDN_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    url = empty_database.conninfo()
    where = ConnectionSettings.from_url(url).describe()
    head = migrate.head()

    assert cli.run(["--url", url, "migrate", "upgrade"]) == 0
    assert capsys.readouterr().out == f"{where}: upgraded from none (empty database) to {head}\n"
    assert len(engines) == 1
    assert cli.run(["--url", url, "migrate", "upgrade"]) == 0
    assert capsys.readouterr().out == f"{where}: already at {head}, nothing to do\n"
    assert len(engines) == 2
    assert cli.run(["--url", url, "check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["revision"], report["head"], report["pending"]) == (head, head, [])
    assert report["ok"]
    assert len(engines) == 3
    assert cli.run(["--url", url, "migrate", "downgrade", "base", "--yes"]) == 0
    assert capsys.readouterr().out == f"{where}: downgraded from {head} to none (empty database)\n"
    assert len(engines) == 4
    assert cli.run(["--url", url, "check"]) == 1
    output = capsys.readouterr()
    assert f"schema revision: none (empty database) (head: {head})" in output.out
    assert "pending:         0001" in output.out
    assert output.err == (
        f"error: the database {where} has no omejdn_pg schema; run `omejdn-pg migrate upgrade`\n"
    )
    assert len(engines) == 5


def test_check_reports_rows(url: str, examples: Path) -> None:
    ok(omejdn_pg("--url", url, "import", str(examples)))
    report = json.loads(ok(omejdn_pg("--url", url, "check", "--json")).stdout)
    assert report["server_version"]
    assert report["rows"]["users"] == 4
    assert report["rows"]["clients"] == 5
    assert report["rows"]["configuration_scope_mapping"] == 5
    human = ok(omejdn_pg("--url", url, "check")).stdout
    assert "configuration_webfinger" in human


# --- admin commands ----------------------------------------------------------------


def test_users(url: str, database: ConnectionSettings, plain_sql: Any) -> None:
    ok(
        omejdn_pg(
            "--url",
            url,
            "users",
            "add",
            "grace",
            "--password-stdin",
            "-a",
            "email=grace@example.org",
            "--attribute-json",
            "email_verified=true",
            input="first password\n",
        )
    )
    shown = json.loads(ok(omejdn_pg("--url", url, "users", "show", "grace", "--json")).stdout)
    assert shown == {
        "username": "grace",
        "backend": "postgres",
        "extern": None,
        "has_password": True,
        "attributes": {"email": "grace@example.org", "email_verified": True},
    }
    hashed = plain_sql.value("SELECT password FROM users WHERE username = 'grace'")
    assert hashed.startswith("$2b$")
    assert "first password" not in hashed

    ok(omejdn_pg("--url", url, "users", "passwd", "grace", "--password-stdin", input="second\n"))
    with Host.from_settings(BackendSettings(connection=database)) as host:
        user = host.users.find("grace")
        assert user is not None
        assert host.users.verify_password(user, "second")
        assert not host.users.verify_password(user, "first password")

    ok(omejdn_pg("--url", url, "users", "set-attr", "grace", "department", "research"))
    ok(omejdn_pg("--url", url, "users", "set-attr", "grace", "email", "--unset"))
    listed = json.loads(ok(omejdn_pg("--url", url, "users", "list", "--json")).stdout)
    assert listed[0]["attributes"] == {"email_verified": True, "department": "research"}
    assert "$2" not in json.dumps(listed)

    assert "exists" in one_error_line(
        omejdn_pg("--url", url, "users", "add", "grace", "--password-stdin", input="x\n")
    )
    # No terminal and no --password-stdin: refuse rather than hang or take an argument.
    assert "--password-stdin" in one_error_line(
        omejdn_pg("--url", url, "users", "add", "heidi", input="")
    )
    one_error_line(omejdn_pg("--url", url, "users", "add", "heidi", "hunter2"), code=2)
    assert "no user" in one_error_line(omejdn_pg("--url", url, "users", "show", "nobody"))
    assert "--yes" in one_error_line(omejdn_pg("--url", url, "users", "delete", "grace"))
    ok(omejdn_pg("--url", url, "users", "delete", "grace", "--yes"))
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    assert plain_sql.value("SELECT count(*) FROM attributes") == 0


def test_clients(url: str, examples: Path, tmp_path: Path, plain_sql: Any) -> None:
    metadata = tmp_path / "client.yml"
    metadata.write_text(
        yaml.safe_dump(
            {
                "client_id": "tool",
                "client_name": "A tool",
                "token_endpoint_auth_method": "private_key_jwt",
                "grant_types": ["client_credentials"],
                "scope": ["omejdn:read"],
                "attributes": {"omejdn": "read"},
            }
        )
    )
    ok(omejdn_pg("--url", url, "clients", "add", "--file", str(metadata)))
    added = ok(
        omejdn_pg(
            "--url",
            url,
            "clients",
            "add",
            "legacy",
            "--auth-method",
            "client_secret_basic",
            "--redirect-uri",
            "https://legacy.example.org/cb",
            "--scope",
            "openid",
        )
    )
    secret = added.stdout.split("client_secret: ")[1].strip()
    listed = json.loads(ok(omejdn_pg("--url", url, "clients", "list", "--json")).stdout)
    assert [c["client_id"] for c in listed] == ["legacy", "tool"]
    assert secret not in json.dumps(listed)

    cert = examples / "keys" / "clients" / "reporting-service.cert"
    ok(omejdn_pg("--url", url, "clients", "set-cert", "tool", str(cert)))
    shown = json.loads(ok(omejdn_pg("--url", url, "clients", "show", "tool", "--json")).stdout)
    assert shown["certificate"]["subject"] == "CN=reporting-service"
    assert (
        plain_sql.value(
            "SELECT count(*) FROM keys WHERE target_type = 'clients' AND target = 'tool'"
        )
        == 1
    )

    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert "bad.pem" in one_error_line(
        omejdn_pg("--url", url, "clients", "set-cert", "tool", str(bad))
    )
    ok(omejdn_pg("--url", url, "clients", "set-cert", "tool", "--remove"))
    ok(omejdn_pg("--url", url, "clients", "delete", "tool", "--yes"))
    assert plain_sql.value("SELECT count(DISTINCT client_id) FROM clients") == 1
    assert "exists" in one_error_line(omejdn_pg("--url", url, "clients", "add", "legacy"))


def test_config(url: str, plain_sql: Any) -> None:
    ok(omejdn_pg("--url", url, "config", "set", "omejdn", input="issuer: https://a.example\n"))
    ok(omejdn_pg("--url", url, "config", "set", "webfinger", "--format", "json", input='["a"]'))
    got = json.loads(
        ok(omejdn_pg("--url", url, "config", "get", "omejdn", "--format", "json")).stdout
    )
    assert got == {"issuer": "https://a.example"}
    assert yaml.safe_load(ok(omejdn_pg("--url", url, "config", "get", "webfinger")).stdout) == ["a"]
    listed = json.loads(ok(omejdn_pg("--url", url, "config", "list", "--json")).stdout)
    assert listed == [
        {"section": "omejdn", "type": "dict", "entries": 1},
        {"section": "webfinger", "type": "list", "entries": 1},
    ]

    assert "invalid configuration section name" in one_error_line(
        omejdn_pg("--url", url, "config", "set", "Bad-Name", input="a: 1\n")
    )
    assert "<stdin>: line 2" in one_error_line(
        omejdn_pg("--url", url, "config", "set", "other", input="a: 1\nb: {x: [1, 2}\nc: 3\n")
    )
    assert "never been written" in one_error_line(omejdn_pg("--url", url, "config", "get", "other"))
    assert (
        plain_sql.value("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'configuration\\_%'")
        == 2
    )


def test_keys(url: str, examples: Path, tmp_path: Path) -> None:
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "omejdn", "--self-signed"))
    ok(omejdn_pg("--url", url, "keys", "generate", "omejdn", "es256", "--ec", "P-256"))
    assert "--force" in one_error_line(
        omejdn_pg("--url", url, "keys", "generate", "omejdn", "omejdn")
    )
    listed = json.loads(ok(omejdn_pg("--url", url, "keys", "list", "--json")).stdout)
    assert [(k["target"], k["key"], k["certificates"], k["state"]) for k in listed] == [
        ("es256", "EC P-256", 0, "active"),
        ("omejdn", "RSA 2048", 1, "active"),
    ]
    jwks = json.loads(ok(omejdn_pg("--url", url, "keys", "jwks")).stdout)
    assert sorted(k["kty"] for k in jwks["keys"]) == ["EC", "RSA"]
    assert all("d" not in k for k in jwks["keys"])

    source = examples / "keys" / "omejdn"
    rsa_key = next(p for p in source.glob("omejdn.*.key") if p.with_suffix(".cert").exists())
    rsa_cert = rsa_key.with_suffix(".cert")
    ec_key = next(p for p in source.glob("omejdn.*.key") if not p.with_suffix(".cert").exists())
    ok(
        omejdn_pg(
            "--url",
            url,
            "keys",
            "import",
            "omejdn",
            "omejdn",
            "--force",
            "--key",
            str(rsa_key),
            "--cert",
            str(rsa_cert),
        )
    )
    with_cert = json.loads(ok(omejdn_pg("--url", url, "keys", "list", "omejdn", "--json")).stdout)
    expected = KeyMaterial.from_pem(rsa_key.read_bytes(), rsa_cert.read_bytes())
    assert expected.kid in [k["kid"] for k in with_cert]

    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    line = one_error_line(omejdn_pg("--url", url, "keys", "import", "x", "y", "--key", str(bad)))
    assert "bad.key" in line
    mismatched = omejdn_pg(
        "--url",
        url,
        "keys",
        "import",
        "x",
        "y",
        "--key",
        str(ec_key),
        "--cert",
        str(rsa_cert),
    )
    assert "does not match" in one_error_line(mismatched)
