"""Where new users and clients go: the seed's configuration as written, and creates
addressed to a backend that is not active (Omejdn's admin APIs)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.errors import ConfigurationError
from omejdn_pg.host import events
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.commands import REPO
from tests.kits.witness import PlainSQL

DESIGN = REPO.parent / "shared" / "DESIGN.md"
SEED_YAML = """\
plugins:
   postgres_backend:
      connection:            # any libpq keyword: host, port, dbname, user, password,
         host: localhost     # sslmode, sslrootcert, connect_timeout, application_name,
         port: 5432          # options, service, target_session_attrs, ...
         dbname: omejdn
         user: myuser
         password: mypassword
      handlers: [keys, config, client, user]   # omitted = all four
deactivate_defaults: [config, keys, client, user]
user_backend_default: postgres     # where new users go when default `user` stays active
client_backend_default: postgres
"""
OMEJDN_HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"  # "mypassword"


def seed_yaml(database: ConnectionSettings, *, backend_defaults: bool) -> str:
    """The seed's YAML with only the connection values pointed at the test database."""
    text = SEED_YAML
    if DESIGN.is_file():  # the contract itself, when it is beside the repository
        found = re.search(r"```yaml\n(plugins:\n.*?)```", DESIGN.read_text(), re.DOTALL)
        assert found is not None, "DESIGN.md lost its example configuration"
        text = found.group(1)
    params = database.params
    for key in ("host", "port", "dbname", "user"):
        value = params.get(key)
        pattern = rf"^(\s+{key}: )\S+"
        assert re.search(pattern, text, re.MULTILINE), key
        if value is None:
            text = re.sub(pattern + r".*\n", "", text, count=1, flags=re.MULTILINE)
        else:
            text = re.sub(pattern, rf"\g<1>'{value}'", text, count=1, flags=re.MULTILINE)
    if not backend_defaults:
        text = re.sub(r"^\w+_backend_default:.*\n", "", text, flags=re.MULTILINE)
    return text


@pytest.mark.parametrize("backend_defaults", [False, True], ids=["as-written", "with-defaults"])
def test_the_seed_configuration_loads_and_stores_what_admin_apis_create(
    database: ConnectionSettings, tmp_path: Path, backend_defaults: bool
) -> None:
    path = tmp_path / "plugins.yml"
    path.write_text(seed_yaml(database, backend_defaults=backend_defaults))
    sql = PlainSQL(database)
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        # Omejdn's admin API v2 hard-codes 'yaml', v1 passes 'default'.
        alice = User(username="alice", password=OMEJDN_HASH)
        loader.fire(events.USER_CREATE, user=alice, user_backend="yaml")
        loader.fire(
            events.USER_CREATE, user=User(username="bob", password=OMEJDN_HASH), user_backend=None
        )
        loader.fire(
            events.CLIENT_CREATE,
            client=Client(metadata={"client_id": "portal"}),
            client_backend="default",
        )
        host = Host(loader)
        host.users.add(User(username="carol", password=OMEJDN_HASH))
        assert alice.backend == "postgres"
        found = host.users.find("alice")
        assert found is not None
        assert host.users.verify_password(found, "mypassword")
    assert sql.rows("SELECT username FROM users ORDER BY 1") == [("alice",), ("bob",), ("carol",)]
    assert sql.rows("SELECT DISTINCT client_id FROM clients") == [("portal",)]
    assert not (tmp_path / "config").exists()


def test_a_redirected_create_is_logged_once(
    database: ConnectionSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "plugins.yml"
    path.write_text(seed_yaml(database, backend_defaults=False))
    with (
        caplog.at_level(logging.INFO),
        PluginLoader.from_files([path], base_dir=tmp_path) as loader,
    ):
        for name in ("u1", "u2", "u3"):
            loader.fire(events.USER_CREATE, user=User(username=name), user_backend="yaml")
    notes = [r.getMessage() for r in caplog.records if "only active user backend" in r.getMessage()]
    assert notes == [
        "user creates addressed to 'yaml' are stored by 'postgres', the only active user backend"
    ]


def test_the_omejdn_section_names_the_default_as_omejdn_reads_it(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    path = tmp_path / "plugins.yml"
    # Files for users stay active beside PostgreSQL; the static file names no default.
    path.write_text(
        seed_yaml(database, backend_defaults=False).replace(
            "deactivate_defaults: [config, keys, client, user]",
            "deactivate_defaults: [config, keys]",
        )
    )
    sql = PlainSQL(database)
    with Host.from_files([path], base_dir=tmp_path) as host:
        # Two active user backends and no default anywhere: refused, naming both.
        with pytest.raises(ConfigurationError, match=r"active user backends: postgres, yaml"):
            host.users.add(User(username="dave", password=OMEJDN_HASH))
        assert sql.value("SELECT count(*) FROM users") == 0
        host.config.write(
            "omejdn", {"issuer": "https://id.example", "user_backend_default": "yaml"}
        )
        host.users.add(User(username="erin", password=OMEJDN_HASH))
        host.config.write(
            "omejdn", {"issuer": "https://id.example", "user_backend_default": "postgres"}
        )
        host.users.add(User(username="frank", password=OMEJDN_HASH))
        assert host.users.find("erin").backend == "yaml"  # type: ignore[union-attr]
        assert host.users.find("frank").backend == "postgres"  # type: ignore[union-attr]
    assert sql.rows("SELECT username FROM users") == [("frank",)]
    assert "erin" in (tmp_path / "config" / "users.yml").read_text()


@pytest.mark.parametrize("named", ["yaml", None], ids=["yaml", "none"])
def test_updates_and_password_events_addressed_to_an_inactive_backend_reach_the_sole_one(
    database: ConnectionSettings, tmp_path: Path, named: str | None
) -> None:
    """Admin API v1 builds the user or client from the request body (``User.from_h``):
    its ``backend`` is ``'yaml'`` or none. With PostgreSQL the only backend, the update,
    the password change and the password check act on PostgreSQL's user, as a create
    addressed the same way does; nothing is silently dropped."""
    path = tmp_path / "plugins.yml"
    path.write_text(seed_yaml(database, backend_defaults=False))
    sql = PlainSQL(database)
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        loader.fire(
            events.USER_CREATE, user=User(username="alice", password=OMEJDN_HASH), user_backend=None
        )
        portal = Client(metadata={"client_id": "portal"})
        loader.fire(events.CLIENT_CREATE, client=portal, client_backend=None)
        body = User(username="alice", password=OMEJDN_HASH, attributes={"a": 1}, backend=named)
        loader.fire(events.USER_UPDATE, user=body)
        assert sql.rows("SELECT key, value FROM attributes WHERE type = 'user'") == [("a", 1)]
        assert body.backend == "postgres"  # the object names where it lives now

        checked = User(username="alice", backend=named)
        answers = loader.fire(
            events.USER_AUTHENTICATION_PASSWORD_VERIFY, user=checked, password="mypassword"
        )
        assert answers == [True]
        changed = User(username="alice", backend=named)
        loader.fire(
            events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=changed, password="a-new-password"
        )
        assert sql.value("SELECT password FROM users WHERE username = 'alice'") != OMEJDN_HASH

        client = Client(metadata={"client_id": "portal", "scope": ["x"]}, backend=named)
        loader.fire(events.CLIENT_UPDATE, client=client)
        assert sql.rows("SELECT value FROM clients WHERE key = 'scope'") == [(["x"],)]
        loader.fire(events.CLIENT_DELETE, client_id="portal")
        loader.fire(events.USER_DELETE, username="alice")
    assert sql.rows("SELECT * FROM users") == []
    assert sql.rows("SELECT * FROM clients") == []


def test_an_update_addressed_to_an_inactive_backend_among_several_is_refused(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    path = tmp_path / "plugins.yml"
    # Files for users stay active beside PostgreSQL: 'ldap' names neither.
    path.write_text(
        seed_yaml(database, backend_defaults=False).replace(
            "deactivate_defaults: [config, keys, client, user]",
            "deactivate_defaults: [config, keys]",
        )
    )
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        for event, context in (
            (events.USER_UPDATE, {}),
            (events.USER_AUTHENTICATION_PASSWORD_CHANGE, {"password": "a-new-password"}),
            (events.USER_AUTHENTICATION_PASSWORD_VERIFY, {"password": "mypassword"}),
        ):
            with pytest.raises(
                ConfigurationError,
                match=r"names backend 'ldap', which is not active; "
                r"active user backends: postgres, yaml",
            ):
                loader.fire(event, user=User(username="alice", backend="ldap"), **context)
