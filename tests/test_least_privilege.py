"""A server role with DML rights only, after the owner ran the migration with ``grant``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.errors import MigrationError, PermissionDenied
from omejdn_pg.host import events
from omejdn_pg.host.facade import Host
from omejdn_pg.keys import KeySet, generate_key
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database import Database
from omejdn_pg.postgres.repositories.config import KNOWN_SECTIONS, ConfigRepository
from omejdn_pg.settings import ConnectionSettings
from tests.helpers import PlainSQL

from .test_events import OMEJDN_HASH, plugin_yaml


@pytest.fixture
def least_privilege(
    database: ConnectionSettings, app_role: str, tmp_path: Path
) -> Iterator[PluginLoader]:
    sql_ = PlainSQL(database)
    # PostgreSQL 15+ gives PUBLIC no CREATE on the public schema; older servers did.
    sql_.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    assert migrate.grant(database, app_role) == list(KNOWN_SECTIONS)
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(database.with_params(user=app_role)))
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        yield loader


def test_every_event_works_with_dml_rights_only(
    least_privilege: PluginLoader, plain_sql: PlainSQL, app_role: str
) -> None:
    loader = least_privilege
    host = Host(loader)
    assert (
        plain_sql.value("SELECT has_schema_privilege(%s, 'public', 'CREATE')", (app_role,)) is False
    )
    # Provisioned sections read as never written, so Omejdn's core applies its defaults.
    assert loader.fire(events.CONFIGURATION_LOAD, section="scope_mapping", fallback=None) == [None]
    host.config.write("omejdn", {"issuer": "https://id.example"})
    host.config.write("scope_mapping", {"profile": ["name"]})
    host.config.write("users", [{"username": "from-file"}])
    assert host.config.read("omejdn") == {"issuer": "https://id.example"}
    assert host.config.read("users") == [{"username": "from-file"}]
    host.users.add(User(username="alice", password=OMEJDN_HASH, attributes={"a": 1}))
    alice = host.users.find("alice")
    assert alice is not None
    assert host.users.verify_password(alice, "mypassword")
    host.users.update_password(alice, "another-password")
    host.clients.add(
        Client(metadata={"client_id": "portal", "jwks": KeySet([generate_key("ES256")]).to_jwks()})
    )
    host.keys.load("omejdn", "omejdn", create=True)
    host.keys.rotate("omejdn", "omejdn")
    host.keys.maintain()
    host.users.delete("alice")
    host.clients.delete("portal")
    assert plain_sql.value("SELECT count(*) FROM users") == 0
    # The role may read the schema revision but not change it.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        PlainSQL(loader.configuration.backend_settings().connection).execute(
            "UPDATE alembic_version SET version_num = 'x'"
        )


def test_a_new_section_tells_the_operator_which_command_creates_it(
    least_privilege: PluginLoader, database: ConnectionSettings, app_role: str
) -> None:
    host = Host(least_privilege)
    with pytest.raises(PermissionDenied) as caught:
        host.config.write("branding", {"logo": "x.png"})
    message = str(caught.value)
    assert "configuration section 'branding' does not exist" in message
    assert f"role {app_role!r} may not create tables" in message
    assert "omejdn-pg config create branding" in message
    with pytest.raises(PermissionDenied, match="config create webfinger --list --replace"):
        host.config.write("webfinger", ["a"])

    owner = Database.connect(database)
    try:
        assert owner.write(lambda conn: ConfigRepository(conn).provision("branding"))
        assert not owner.write(lambda conn: ConfigRepository(conn).provision("branding"))
    finally:
        owner.dispose()
    host.config.write("branding", {"logo": "x.png"})
    assert host.config.read("branding") == {"logo": "x.png"}


def test_grant_names_what_is_missing(
    database: ConnectionSettings, empty_database: ConnectionSettings
) -> None:
    with pytest.raises(MigrationError, match="role 'nobody_here' does not exist"):
        migrate.grant(database, "nobody_here")
