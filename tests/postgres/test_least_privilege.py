"""A server role with DML rights only, after the owner ran the migration with ``grant``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.errors import MigrationError, PermissionDenied
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.config import KNOWN_SECTIONS, ConfigRepository
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.passwords import OMEJDN_HASH
from tests.kits.plugins import plugin_yaml
from tests.kits.witness import PlainSQL


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


def test_the_change_counters_are_written_by_the_packages_functions_only(
    least_privilege: PluginLoader, plain_sql: PlainSQL
) -> None:
    """A role with DML rights could set its group's counter to the largest bigint, after
    which every write of the group failed; now it may only read the counters."""
    host = Host(least_privilege)
    host.users.add(User(username="alice", password=OMEJDN_HASH))
    role = PlainSQL(least_privilege.configuration.backend_settings().connection)
    assert role.rows("SELECT DISTINCT name FROM omejdn_pg_changes") == [("user",)]
    for attack in (
        "UPDATE omejdn_pg_changes SET counter = 9223372036854775807",
        "DELETE FROM omejdn_pg_changes",
        "INSERT INTO omejdn_pg_changes VALUES ('user', 1, 9223372036854775807, NULL, 1, NULL, "
        "now())",
        "SELECT setval('omejdn_pg_change_seq', 9223372036854775807)",
        "SELECT nextval('omejdn_pg_change_seq')",
        "SELECT omejdn_pg_count('user', NULL)",
        "TRUNCATE omejdn_pg_changes",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            role.execute(attack)
    # What the role may do: announce through the function, and write.
    role.execute("SELECT omejdn_pg_changed('config', 'omejdn')")
    host.users.update_password(host.users.find("alice"), "another-password")  # type: ignore[arg-type]
    assert plain_sql.value("SELECT max(counter) < 9223372036854775807 FROM omejdn_pg_changes")


def test_grant_reaches_this_packages_tables_only(
    database: ConnectionSettings, app_role: str, plain_sql: PlainSQL
) -> None:
    """Another application's tables in the same schema stay out of the role's reach, those
    that existed before the grant and those created after it; a section the owner
    provisions later is the role's to write."""
    plain_sql.execute("CREATE TABLE billing_before (secret text)")
    plain_sql.execute("INSERT INTO billing_before VALUES ('s3cr3t')")
    assert migrate.grant(database, app_role) == list(KNOWN_SECTIONS)
    plain_sql.execute("CREATE TABLE billing_after (secret text)")
    role = PlainSQL(database.with_params(user=app_role))
    for table in ("billing_before", "billing_after"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            role.rows(f"SELECT * FROM {table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            role.execute(f"INSERT INTO {table} VALUES ('x')")
    # No default privileges: tables made later are nobody's business but their owner's.
    defaults = plain_sql.value(
        "SELECT count(*) FROM pg_default_acl, aclexplode(defaclacl) AS acl "
        "WHERE acl.grantee = %s::regrole",
        (app_role,),
    )
    assert defaults == 0
    owner = Database.connect(database)
    try:
        assert owner.write(lambda conn: ConfigRepository(conn).provision("branding"))
    finally:
        owner.dispose()
    role.execute("""INSERT INTO configuration_branding VALUES ('logo', '"x.png"')""")
    assert role.value("SELECT count(*) FROM configuration_branding") == 1
