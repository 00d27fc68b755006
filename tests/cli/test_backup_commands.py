"""``omejdn-pg backup`` and ``restore`` as an operator runs them: subprocesses against a real
PostgreSQL, files and pipes, with no key-encryption key in the command's environment."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from omejdn_pg.entities import User
from omejdn_pg.sealing import generate_secret, is_sealed
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import ok, omejdn_pg, one_error_line
from tests.kits.witness import PlainSQL
from tests.secrets import watch

KEK_ENV = "OMEJDN_PG_TEST_BACKUP_CLI_KEK"
ROWS = "SELECT target_type, target, kid, type, value, state FROM keys ORDER BY 1, 2, 3, 4"


@pytest.fixture
def sealed_source(database: ConnectionSettings, monkeypatch: pytest.MonkeyPatch) -> str:
    """A database whose private keys are sealed by a key the CLI below never gets."""
    monkeypatch.setenv(KEK_ENV, watch(generate_secret()))
    settings = BackendSettings(
        connection=database, key_encryption=({"id": "kek-1", "env": KEK_ENV},)
    )
    with Host.from_settings(settings) as host:
        host.users.add(User(username="alice", consent={"app": ["openid"]}))
        host.keys.signing_key()
        host.keys.rotate("omejdn", "omejdn")
    monkeypatch.delenv(KEK_ENV)
    return database.conninfo()


def test_backup_to_a_file_and_restore_it_without_the_key_encryption_key(
    sealed_source: str,
    database: ConnectionSettings,
    other_database: ConnectionSettings,
    tmp_path: Path,
) -> None:
    file = tmp_path / "omejdn.backup"
    made = ok(omejdn_pg("--url", sealed_source, "backup", str(file)))
    assert f"backed up to {file}" in made.stdout
    assert "sha256" in made.stdout
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert "exists" in one_error_line(omejdn_pg("--url", sealed_source, "backup", str(file)))
    ok(omejdn_pg("--url", sealed_source, "backup", str(file), "--force"))

    target = other_database.conninfo()
    dry = ok(omejdn_pg("--url", target, "restore", str(file), "--dry-run"))
    assert "dry run" in dry.stdout
    assert "sealed by key-encryption key 'kek-1' (2)" in dry.stdout
    assert PlainSQL(other_database).rows(ROWS) == []

    done = ok(omejdn_pg("--url", target, "restore", str(file), "-o", "json"))
    report = json.loads(done.stdout)
    assert report["counts"]["users"] == 1
    assert report["dry_run"] is False
    assert report["sealed_by"] == {"kek-1": 2}
    source_rows = PlainSQL(database).rows(ROWS)
    assert PlainSQL(other_database).rows(ROWS) == source_rows
    assert any(is_sealed(value) for _tt, _t, _k, _ty, value, _s in source_rows)
    assert {state for *_rest, state in source_rows} == {"active", "next"}

    refused = one_error_line(omejdn_pg("--url", target, "restore", str(file)))
    assert "not empty" in refused
    assert "--replace" in refused
    ok(omejdn_pg("--url", target, "restore", str(file), "--replace"))
    assert PlainSQL(other_database).rows(ROWS) == source_rows


def test_backup_streams_to_stdout_and_restore_from_stdin(
    sealed_source: str, database: ConnectionSettings, other_database: ConnectionSettings
) -> None:
    streamed = ok(omejdn_pg("--url", sealed_source, "backup", "-"))
    assert streamed.stdout.startswith('{"format": "omejdn-pg backup"')
    assert '"manifest"' in streamed.stdout.splitlines()[-1]
    assert "sha256" in streamed.stderr

    ok(omejdn_pg("--url", other_database.conninfo(), "restore", "-", input=streamed.stdout))
    assert PlainSQL(other_database).rows(ROWS) == PlainSQL(database).rows(ROWS)


def test_a_damaged_file_is_one_error_line_and_nothing_is_written(
    sealed_source: str, other_database: ConnectionSettings, tmp_path: Path
) -> None:
    file = tmp_path / "b"
    ok(omejdn_pg("--url", sealed_source, "backup", str(file)))
    data = file.read_bytes()
    target = other_database.conninfo()

    (tmp_path / "cut").write_bytes(data[: len(data) - 40])
    error = one_error_line(omejdn_pg("--url", target, "restore", str(tmp_path / "cut")))
    assert "truncated" in error
    assert str(tmp_path / "cut") in error
    (tmp_path / "edited").write_bytes(data.replace(b'"alice"', b'"mallory"', 1))
    error = one_error_line(omejdn_pg("--url", target, "restore", str(tmp_path / "edited")))
    assert "checksum mismatch" in error
    assert PlainSQL(other_database).rows("SELECT * FROM users") == []
    missing = one_error_line(omejdn_pg("--url", target, "restore", str(tmp_path / "nothing")))
    assert "No such file" in missing


def test_an_attribute_whose_value_is_null_survives_backup_and_restore(
    database: ConnectionSettings, other_database: ConnectionSettings, tmp_path: Path
) -> None:
    with Host.from_settings(BackendSettings(connection=database)) as host:
        host.users.add(User(username="alice", attributes={"nickname": None}))
    file = tmp_path / "omejdn.backup"
    ok(omejdn_pg("--url", database.conninfo(), "backup", str(file)))

    ok(omejdn_pg("--url", other_database.conninfo(), "restore", str(file)))

    assert PlainSQL(other_database).rows(
        "SELECT identifier, key, value IS NULL, jsonb_typeof(value) FROM attributes"
    ) == [("alice", "nickname", False, "null")]
    with Host.from_settings(BackendSettings(connection=other_database)) as host:
        found = host.users.find("alice")
        assert found is not None
        assert found.attributes == {"nickname": None}
