"""The server connection terminated at chosen points inside every kind of write.

A second connection kills the writer's backend just before its N-th statement.
Killed on every attempt, the write fails with StorageUnavailable and the
previous state is intact (checked with plain SQL); killed once, the retry on a
fresh connection writes it whole; either way the next call succeeds.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.errors import StorageUnavailable
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.passwords import OMEJDN_HASH
from tests.kits.plugins import plugin_yaml
from tests.kits.witness import PlainSQL

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
STATE_QUERIES = (
    "SELECT username, password, extern, consent FROM users ORDER BY 1",
    "SELECT * FROM attributes ORDER BY 1, 2, 3",
    "SELECT * FROM clients ORDER BY 1, 2",
    "SELECT target_type, target, kid, type, value, state FROM keys ORDER BY 1, 2, 3, 4",
    "SELECT key, value FROM configuration_omejdn ORDER BY 1",
)


@pytest.fixture
def seeded_host(database: ConnectionSettings, tmp_path: Path) -> Iterator[Host]:
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(database))
    with Host(PluginLoader.from_files([path], base_dir=tmp_path)) as opened:
        opened.users.add(User(username="alice", password=OMEJDN_HASH, attributes={"v": 0}))
        opened.clients.add(
            Client(
                metadata={"client_id": "portal", "jwks": KeySet([generate_key("ES256")]).to_jwks()},
                attributes={"v": 0},
            )
        )
        opened.config.write("omejdn", {"issuer": "https://id.example", "v": 0})
        opened.keys.load("omejdn", "omejdn", create=True)
        yield opened


def state(sql: PlainSQL) -> list[Any]:
    return [sql.rows(query) for query in STATE_QUERIES]


def user_update(host: Host) -> None:
    alice = host.users.find("alice")
    assert alice is not None
    alice.attributes = {"v": 1, "w": 2}
    alice.consent = {"portal": ["openid"]}
    host.users.save(alice)


def client_update(host: Host) -> None:
    portal = host.clients.find("portal")
    assert portal is not None
    portal.metadata["client_name"] = "Portal"
    portal.metadata["jwks"] = KeySet([generate_key("ES256"), generate_key("RS256")]).to_jwks()
    portal.attributes = {"v": 1}
    host.clients.save(portal)


def configuration_store(host: Host) -> None:
    host.config.write("omejdn", {"issuer": "https://id2.example", "v": 1, "new": [1, 2]})


def keys_store(host: Host) -> None:
    host.keys.store("omejdn", "omejdn", KeySet([generate_key("ES256"), generate_key("ES384")]))


def password_change(host: Host) -> None:
    alice = host.users.find("alice")
    assert alice is not None
    host.users.update_password(alice, "a-new-password")


def rotation_step(host: Host) -> None:
    host.keys.rotate("omejdn", "omejdn", now=NOW)


def an_import(host: Host) -> None:
    # What `omejdn-pg import` does: every change through the events, in one batch.
    with host.batch():
        for index in range(5):
            host.users.add(User(username=f"imported{index}", password=OMEJDN_HASH))
        host.config.write("omejdn", {"issuer": "https://imported.example"})
        host.clients.add(Client(metadata={"client_id": "imported"}))


WRITES: dict[str, Callable[[Host], None]] = {
    "USER_UPDATE": user_update,
    "CLIENT_UPDATE with JWKS": client_update,
    "CONFIGURATION_STORE": configuration_store,
    "KEYS_STORE": keys_store,
    "password change": password_change,
    "key rotation": rotation_step,
    "import": an_import,
}


class Killer:
    """Terminates the plugin connection's backend just before its N-th statement
    of a transaction, or (``at="commit"``) just before its COMMIT."""

    def __init__(self, host: Host, sql: PlainSQL, at: int | str, times: int) -> None:
        assert host.postgres is not None
        self.engine = host.postgres.database.engine
        self.sql, self.at, self.left = sql, at, times
        self.count = 0
        self.kills = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if cursor.connection.autocommit:
            return  # a read (outside any transaction), not the write under test
        self.count += 1
        if self.count == self.at and self.left > 0:
            self.left -= 1
            self.kills += 1
            self.count = 0
            pid = cursor.connection.info.backend_pid
            self.sql.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def at_commit(self, conn: Any) -> None:
        if self.left > 0:
            self.left -= 1
            self.kills += 1
            pid = conn.connection.dbapi_connection.info.backend_pid
            self.sql.execute("SELECT pg_terminate_backend(%s)", (pid,))

    def __enter__(self) -> Killer:
        if self.at == "commit":
            event.listen(self.engine, "commit", self.at_commit)
            return self
        event.listen(self.engine, "before_cursor_execute", self)
        # A statement count restarts with each attempt's new transaction.
        event.listen(self.engine, "begin", self._reset)
        return self

    def _reset(self, *_: Any) -> None:
        self.count = 0

    def __exit__(self, *_: object) -> None:
        if self.at == "commit":
            event.remove(self.engine, "commit", self.at_commit)
            return
        event.remove(self.engine, "before_cursor_execute", self)
        event.remove(self.engine, "begin", self._reset)


# A password change is a single statement; every other write has several.
KILL_POINTS = [
    (write, at)
    for write in WRITES
    for at in ([1, "commit"] if write == "password change" else [1, 2, 3, "commit"])
]


@pytest.mark.parametrize(("write", "at"), KILL_POINTS)
def test_a_write_killed_on_every_attempt_changes_nothing(
    seeded_host: Host, plain_sql: PlainSQL, write: str, at: int | str
) -> None:
    before = state(plain_sql)
    with Killer(seeded_host, plain_sql, at, times=10) as killer, pytest.raises(StorageUnavailable):
        WRITES[write](seeded_host)
    assert killer.kills >= 1
    assert state(plain_sql) == before
    WRITES[write](seeded_host)  # the next call succeeds
    assert state(plain_sql) != before


@pytest.mark.parametrize("write", [w for w in WRITES if w != "import"])
def test_a_write_killed_once_is_retried_and_lands_whole(
    seeded_host: Host, plain_sql: PlainSQL, write: str
) -> None:
    reference_host_state = state(plain_sql)
    second_or_only = 1 if write == "password change" else 2
    with Killer(seeded_host, plain_sql, second_or_only, times=1) as killer:
        WRITES[write](seeded_host)
    assert killer.kills == 1
    assert state(plain_sql) != reference_host_state
