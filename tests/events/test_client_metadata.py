"""Client metadata Omejdn reads, checked on every write path with one message per field:
the events of PostgreSQL and of the file store, ``clients update --set`` and an import.
Rows are checked with plain SQL: a refused client leaves nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from omejdn_pg import Client, PluginLoader
from omejdn_pg.client_metadata import metadata_problems
from omejdn_pg.errors import InvalidValue
from omejdn_pg.host import events
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import ok, omejdn_pg, one_error_line
from tests.kits.plugins import plugin_yaml
from tests.kits.witness import PlainSQL

REPORTED = {
    "client_id": "bad",
    "grant_types": "implicit",
    "redirect_uris": 5,
    "scope": 42,
}
"""The three the report found stored, in one client."""


@pytest.fixture
def file_loader(database: ConnectionSettings, tmp_path: Path) -> Iterator[PluginLoader]:
    """Clients in the default file store (``config/clients.yml``)."""
    path = tmp_path / "plugins.yml"
    path.write_text(
        plugin_yaml(database, handlers="[user]", deactivate="[user]").replace(
            "client_backend_default: postgres", "client_backend_default: yaml"
        )
    )
    with PluginLoader.from_files([path], base_dir=tmp_path) as loaded:
        yield loaded


def client_rows(sql: PlainSQL) -> int:
    return int(sql.value("SELECT count(*) FROM clients"))


def test_the_reported_values_are_refused_by_client_create_one_message_each(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    with pytest.raises(InvalidValue) as caught:
        loader.fire(events.CLIENT_CREATE, client=Client(metadata=dict(REPORTED)))
    message = str(caught.value)
    assert message.startswith("client 'bad': ")
    assert "grant_types: 'implicit' is not one of authorization_code" in message
    assert "redirect_uris: must be a list of strings, got 5" in message
    assert "scope: must be a list of strings, got 42" in message
    assert message.count(";") == 2  # one message per field
    assert client_rows(plain_sql) == 0


def test_client_update_is_checked_and_the_stored_client_kept(
    loader: PluginLoader, plain_sql: PlainSQL
) -> None:
    good = {"client_id": "app", "redirect_uris": ["https://app.example/cb"], "scope": ["openid"]}
    loader.fire(events.CLIENT_CREATE, client=Client(metadata=dict(good)))
    bad = Client(metadata={**good, "redirect_uris": ["/relative/cb"]}, backend="postgres")
    with pytest.raises(InvalidValue, match="redirect_uris: '/relative/cb' is not an absolute URI"):
        loader.fire(events.CLIENT_UPDATE, client=bad)
    assert (
        plain_sql.value(
            "SELECT value::text FROM clients WHERE client_id = 'app' AND key = 'redirect_uris'"
        )
        == '["https://app.example/cb"]'
    )


def test_the_file_store_checks_too(file_loader: PluginLoader, tmp_path: Path) -> None:
    with pytest.raises(InvalidValue, match="redirect_uris: must be a list of strings, got 5"):
        file_loader.fire(events.CLIENT_CREATE, client=Client(metadata=dict(REPORTED)))
    assert not (tmp_path / "config" / "clients.yml").exists()


def test_clients_update_set_scope_42_is_refused(
    database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    url = database.conninfo()
    ok(omejdn_pg("--url", url, "clients", "add", "app", "--auth-method", "none"))
    line = one_error_line(omejdn_pg("--url", url, "clients", "update", "app", "--set", "scope=42"))
    assert "scope: must be a list of strings, got 42" in line
    assert plain_sql.value("SELECT count(*) FROM clients WHERE key = 'scope'") == 0


def test_import_names_the_file_and_the_entry(
    examples: Path, database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    path = examples / "config" / "clients.yml"
    clients = yaml.safe_load(path.read_text())
    clients[1]["grant_types"] = "implicit"
    path.write_text(yaml.safe_dump(clients))
    with (
        Host.from_settings(BackendSettings(connection=database)) as host,
        pytest.raises(InvalidValue) as caught,
    ):
        transfer.import_deployment(examples, host)
    assert f"{path}: entry 2: client {clients[1]['client_id']!r}: grant_types:" in str(caught.value)
    assert client_rows(plain_sql) == 0


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"token_endpoint_auth_method": "magic"}, "token_endpoint_auth_method: 'magic' is not"),
        ({"token_endpoint_auth_method": ["none"]}, "token_endpoint_auth_method: must be a str"),
        ({"scope": "openid profile"}, "is not one scope"),
        ({"scope": ["openid", 7]}, "scope: must be a list of strings"),
        ({"redirect_uris": ["https://a.example/cb#x"]}, "has a fragment, which RFC 6749"),
        ({"redirect_uris": ["https://a.example/c b"]}, "is not an absolute URI"),
        ({"post_logout_redirect_uris": {"a": 1}}, "post_logout_redirect_uris: must be a list"),
        ({"resource": ["api"]}, "resource: 'api' is not an absolute URI"),
        ({"jwks_uri": 1}, "jwks_uri: must be a string"),
        ({"client_name": ["x"]}, "client_name: must be a string"),
        ({"client_secret": 123456789}, "client_secret: must be a string, got type int"),
        ({"grant_types": ["password"]}, "grant_types: 'password' is not one of"),
    ],
)
def test_each_field_omejdn_reads(metadata: dict[str, Any], problem: str) -> None:
    problems = metadata_problems(metadata)
    assert len(problems) == 1, problems
    assert problem in problems[0]
    assert "123456789" not in problems[0]


def test_what_omejdn_itself_writes_passes() -> None:
    # Omejdn's quick start writes single strings (read with Ruby's [*value]); null is absent.
    assert (
        metadata_problems(
            {
                "client_id": "x",
                "redirect_uris": "http://localhost:4200",
                "scope": "openid",
                "grant_types": ["authorization_code", "refresh_token"],
                "post_logout_redirect_uris": ["org.example.mobile:/oauth2redirect"],
                "resource": ["http://example.org", "http://localhost:4567/api"],
                "token_endpoint_auth_method": "tls_client_auth",
                "logo_uri": 5,  # not a field Omejdn reads: stored as given
                "request_uris": None,
            }
        )
        == []
    )
