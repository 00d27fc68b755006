"""Connecting with the static configuration: what a failure says (one line, the secret
left out), and the libpq forms that reach a live server (several hosts, PG* variables)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from omejdn_pg.errors import StorageUnavailable
from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.settings.connection import ConnectionSettings


def connection_failure(tmp_path: Path, connection: str, caplog: pytest.LogCaptureFixture) -> str:
    path = tmp_path / "plugins.yml"
    path.write_text(
        f"plugins:\n  postgres_backend:\n    connection: {connection}\n"
        "deactivate_defaults: [config, keys, client, user]\n"
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(StorageUnavailable) as caught:
        PluginLoader.from_files([path])
    assert "supersecret" not in caplog.text
    return str(caught.value)


def test_unreachable_host_is_one_line_without_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    message = connection_failure(
        tmp_path,
        "{host: 127.0.0.1, port: 1, dbname: omejdn, user: alice, password: supersecret, "
        "connect_timeout: 2}",
        caplog,
    )
    assert "alice@127.0.0.1:1/omejdn" in message
    assert "supersecret" not in message
    assert "\n" not in message


def test_missing_database_is_named(
    tmp_path: Path, server: ConnectionSettings, caplog: pytest.LogCaptureFixture
) -> None:
    params = {**server.params, "dbname": "no_such_database_here", "password": "supersecret"}
    inline = ", ".join(f"{k}: '{v}'" for k, v in params.items())
    message = connection_failure(tmp_path, "{" + inline + "}", caplog)
    assert 'database "no_such_database_here" does not exist' in message
    assert "supersecret" not in message


def test_wrong_password_is_named_without_the_password(
    tmp_path: Path, password_server: ConnectionSettings, caplog: pytest.LogCaptureFixture
) -> None:
    params = {**password_server.params, "password": "supersecret"}
    inline = ", ".join(f"{k}: '{v}'" for k, v in params.items())
    message = connection_failure(tmp_path, "{" + inline + "}", caplog)
    assert "authentication failed for user" in message
    assert f'user "{password_server.params["user"]}"' in message
    assert "supersecret" not in message
    assert "\n" not in message


def current_database(settings: ConnectionSettings) -> str:
    database = Database.connect(settings)
    try:
        name: str = database.read(
            lambda conn: conn.execute(text("SELECT current_database()")).scalar_one()
        )
    finally:
        database.dispose()
    return name


def test_multi_host_connection_fails_over_to_the_next_host(database: ConnectionSettings) -> None:
    host = database.params.get("host", "localhost")
    port = database.params.get("port", "5432")
    multi = database.with_params(
        host=f"127.0.0.1,{host}",
        port=f"1,{port}",
        target_session_attrs="read-write",
        connect_timeout="2",
    )
    assert current_database(multi) == database.params["dbname"]


def test_libpq_environment_variables_fill_what_the_file_leaves_out(
    database: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGDATABASE", database.params["dbname"])
    without_dbname = ConnectionSettings({k: v for k, v in database.params.items() if k != "dbname"})
    assert current_database(without_dbname) == database.params["dbname"]
