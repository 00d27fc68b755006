"""The read cache against a real PostgreSQL: hits without a round trip, invalidation
across loaders, and the failure modes — a killed, stalled or locked-out listener, a
change that came without its notice — each checked against the staleness bound.

Two loaders on one database stand for two server processes (a real second
process is in ``test_cache_process.py``); the writer usually runs with its
cache off, so the reader's listener is the only one in ``pg_stat_activity``.
The bound is asserted exactly and without a margin, in a way no schedule can
fail (:mod:`tests.kits.staleness`): a stale answer fails a test only if its read
began ``BOUND`` or more after the change's commit returned.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres.cache.changes import CHANNEL, Notice
from omejdn_pg.postgres.cache.listener import LISTENER_APPLICATION_NAME
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.plugins import cache_of, plugin, plugin_file
from tests.kits.staleness import (
    GIVE_UP,
    fresh_within,
    heartbeats,
    notices_heard,
    served_late,
    until,
)
from tests.kits.witness import PlainSQL

BOUND = 0.5
"""``max_staleness`` of the caches under test, in seconds."""
CACHE = f"{{max_staleness: {BOUND}}}"
EVERYTHING = f"{{max_staleness: {BOUND}, client: true, user: true}}"
OFF = "false"
HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"


def one(loader: PluginLoader, event: str, **context: Any) -> Any:
    (answer,) = loader.fire(event, **context)
    return answer


def section(loader: PluginLoader, name: str = "omejdn") -> Any:
    return one(loader, events.CONFIGURATION_LOAD, section=name, fallback=None)


def store(loader: PluginLoader, data: Any, name: str = "omejdn") -> None:
    loader.fire(events.CONFIGURATION_STORE, section=name, data=data)


def jwks() -> dict[str, Any]:
    return KeySet([generate_key("ES256")]).to_jwks(private=True)


def kids(answer: dict[str, Any] | None) -> list[str]:
    return [key["kid"] for key in (answer or {"keys": []})["keys"]]


def within_bound(check: Callable[[], bool]) -> float:
    """Read until ``check()`` holds; called just after a write returned, it fails on a
    stale answer to any read begun ``BOUND`` or more after that write."""
    return fresh_within(BOUND, check)


def warm(read: Callable[[], Any], loader: PluginLoader) -> Any:
    """Read until the answer comes from the cache (a fill may lose to a late notice, and
    a late heartbeat on a busy machine makes the cache step aside for a moment)."""
    statements = count_statements(plugin(loader).database.engine)
    answer: list[Any] = []

    def served_from_cache() -> bool:
        before = len(statements)
        answer[:] = [read()]
        return len(statements) == before

    until(served_from_cache, "the answer was never served from the cache")
    return answer[0]


def listener_pids(sql: PlainSQL, user: str | None = None) -> list[int]:
    rows = sql.rows(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
        "AND datname = current_database() AND (%s::text IS NULL OR usename = %s)",
        (LISTENER_APPLICATION_NAME, user, user),
    )
    return [pid for (pid,) in rows]


def kill_listener(sql: PlainSQL, user: str | None = None) -> int:
    """Terminate the listener's connection; returns once its backend is gone."""
    (pid,) = listener_pids(sql, user)
    assert sql.value("SELECT pg_terminate_backend(%s)", (pid,))
    until(lambda: pid not in listener_pids(sql, user), "the listener's backend stays")
    return pid


# --- hits ---------------------------------------------------------------------------


def test_cached_point_reads_send_no_statement(open_loader: Callable[..., PluginLoader]) -> None:
    loader = open_loader(CACHE)
    store(loader, {"issuer": "https://a.example", "scopes": ["openid"]})
    store(loader, ["webfinger", "entry"], name="webfinger")
    signer = jwks()
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=signer)
    reads: list[Callable[[], Any]] = [
        lambda: section(loader),
        lambda: section(loader, "webfinger"),
        lambda: section(loader, "never_written"),  # "never written" is an answer too
        lambda: one(loader, events.KEYS_LOAD, target_type="omejdn", target="omejdn", create=False),
        lambda: one(loader, events.KEYS_LOAD_ALL, target_type="omejdn"),
        lambda: one(loader, events.KEYS_LOAD, target_type="jwt", target="none", create=False),
    ]
    first = [warm(read, loader) for read in reads]
    assert first[0] == {"issuer": "https://a.example", "scopes": ["openid"]}
    assert first[2] is None
    assert kids(first[3]) == [key["kid"] for key in signer["keys"]]
    assert first[5] is None

    statements = count_statements(plugin(loader).database.engine)
    hits = cache_of(loader).stats()["hits"]
    for _ in range(100):
        assert [read() for read in reads] == first
    assert statements == []
    stats = cache_of(loader).stats()
    assert stats["hits"] == hits + 600
    assert stats["hits_by_group"]["config"] >= 300
    assert stats["serving"]


def test_answers_are_copies(open_loader: Callable[..., PluginLoader]) -> None:
    loader = open_loader(EVERYTHING)
    store(loader, {"issuer": "https://a.example", "nested": {"scopes": ["openid"]}})
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks())
    client = Client(metadata={"client_id": "app", "redirect_uris": ["https://app/cb"]})
    loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    user = User(username="alice", password=HASH, attributes={"groups": ["a"]})
    loader.fire(events.USER_CREATE, user=user, user_backend="postgres")

    config = warm(lambda: section(loader), loader)
    config["nested"]["scopes"].append("profile")
    config["issuer"] = "https://evil.example"
    assert section(loader) == {"issuer": "https://a.example", "nested": {"scopes": ["openid"]}}

    keys = warm(
        lambda: one(loader, events.KEYS_LOAD, target_type="omejdn", target="omejdn"), loader
    )
    keys["keys"][0]["d"] = "tampered"
    again = one(loader, events.KEYS_LOAD, target_type="omejdn", target="omejdn")
    assert again["keys"][0]["d"] != "tampered"

    found = warm(lambda: one(loader, events.CLIENT_GET, client_id="app"), loader)
    found.metadata["redirect_uris"].append("https://evil/cb")
    assert one(loader, events.CLIENT_GET, client_id="app").metadata["redirect_uris"] == [
        "https://app/cb"
    ]
    alice = warm(lambda: one(loader, events.USER_GET, username="alice"), loader)
    alice.attributes["groups"].append("admin")
    alice.password = None
    cached = one(loader, events.USER_GET, username="alice")
    assert cached.attributes == {"groups": ["a"]}
    assert cached.password == HASH
    assert cached == User(
        username="alice", password=HASH, attributes={"groups": ["a"]}, backend="postgres"
    )
    assert type(cached) is User
    assert type(one(loader, events.CLIENT_GET, client_id="app")) is Client


def test_users_and_clients_are_not_cached_by_default(
    open_loader: Callable[..., PluginLoader],
) -> None:
    loader = open_loader(CACHE)
    loader.fire(
        events.CLIENT_CREATE,
        client=Client(metadata={"client_id": "app"}),
        client_backend="postgres",
    )
    loader.fire(events.USER_CREATE, user=User(username="alice"), user_backend="postgres")
    statements = count_statements(plugin(loader).database.engine)
    for _ in range(3):
        assert one(loader, events.CLIENT_GET, client_id="app").client_id == "app"
        assert one(loader, events.USER_GET, username="alice").username == "alice"
    assert len(statements) == 6
    assert cache_of(loader).groups == {"config", "keys"}


def test_cache_false_starts_no_listener(
    open_loader: Callable[..., PluginLoader], plain_sql: PlainSQL
) -> None:
    loader = open_loader(OFF)
    assert plugin(loader).cache is None
    assert plugin(loader).stats() == {}
    store(loader, {"a": 1})
    statements = count_statements(plugin(loader).database.engine)
    assert section(loader) == section(loader) == {"a": 1}
    assert len(statements) == 2
    assert listener_pids(plain_sql) == []


# --- read-your-writes -------------------------------------------------------------------


def test_a_process_reads_its_own_writes_at_once(
    open_loader: Callable[..., PluginLoader], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its listener deaf to every notice, the writing process still never serves
    what it replaced: its writes drop its own entries before they return."""
    loader = open_loader("{max_staleness: 30, client: true, user: true}")
    cache = cache_of(loader)
    host = Host(loader)
    store(loader, {"n": 1})
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks())
    client = Client(metadata={"client_id": "app", "client_name": "App"})
    loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
    loader.fire(
        events.USER_CREATE, user=User(username="alice", password=HASH), user_backend="postgres"
    )
    reads: dict[str, Callable[[], Any]] = {
        "config": lambda: section(loader),
        "keys": lambda: one(loader, events.KEYS_LOAD, target_type="omejdn", target="omejdn"),
        "all": lambda: one(loader, events.KEYS_LOAD_ALL, target_type="omejdn"),
        "client": lambda: one(loader, events.CLIENT_GET, client_id="app"),
        "client_keys": lambda: one(loader, events.KEYS_LOAD, target_type="clients", target="app"),
        "user": lambda: one(loader, events.USER_GET, username="alice"),
    }
    for read in reads.values():
        warm(read, loader)
    monkeypatch.setattr(cache, "on_notice", lambda payload: None)
    invalidations = cache.stats()["invalidations"]

    store(loader, {"n": 2})
    assert section(loader) == {"n": 2}

    new_signer = jwks()
    loader.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=new_signer)
    assert kids(reads["keys"]()) == kids(new_signer)
    assert kids(reads["all"]()) == kids(new_signer)
    # The key lifecycle writes key rows without the adapters, and is seen as well.
    rotated = host.keys.rotate("omejdn", "omejdn")
    assert rotated.kid in kids(reads["all"]())

    found = reads["client"]()
    found.metadata["client_name"] = "App 2"
    found.metadata["jwks"] = jwks()
    loader.fire(events.CLIENT_UPDATE, client=found)
    assert reads["client"]().metadata["client_name"] == "App 2"
    assert kids(reads["client_keys"]()) == kids(found.metadata["jwks"])

    alice = reads["user"]()
    loader.fire(events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=alice, password="n3w-secret")
    assert reads["user"]().password == alice.password != HASH

    loader.fire(events.CLIENT_DELETE, client_id="app")
    assert reads["client"]() is None
    assert reads["client_keys"]() is None
    loader.fire(events.USER_DELETE, username="alice")
    assert reads["user"]() is None

    assert cache.stats()["invalidations"] > invalidations
    assert cache.stats()["serving"]


def test_reads_inside_a_batch_are_never_kept(open_loader: Callable[..., PluginLoader]) -> None:
    """A batch reads its own uncommitted writes; rolled back, they must not linger."""
    loader = open_loader(CACHE)
    host = Host(loader)
    store(loader, {"n": 1})
    warm(lambda: section(loader), loader)

    class Abort(Exception):
        pass

    def batch_that_fails() -> None:
        with host.batch():
            store(loader, {"n": 2})
            assert section(loader) == {"n": 2}
            assert section(loader, "fresh") is None
            store(loader, {"new": True}, name="fresh")
            assert section(loader, "fresh") == {"new": True}
            raise Abort

    with pytest.raises(Abort):
        batch_that_fails()
    for _ in range(20):
        assert section(loader) == {"n": 1}
        assert section(loader, "fresh") is None
    with host.batch():
        store(loader, {"n": 3})
    assert section(loader) == {"n": 3}


# --- other processes, within the bound ------------------------------------------------


def test_a_write_is_seen_by_another_loader_within_the_bound(
    open_loader: Callable[..., PluginLoader],
) -> None:
    reader = open_loader(EVERYTHING)
    writer = open_loader(OFF)
    store(writer, {"n": 1})
    writer.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks())
    writer.fire(
        events.CLIENT_CREATE,
        client=Client(metadata={"client_id": "app"}),
        client_backend="postgres",
    )
    writer.fire(events.USER_CREATE, user=User("alice", HASH), user_backend="postgres")
    all_keys = lambda: one(reader, events.KEYS_LOAD_ALL, target_type="omejdn")  # noqa: E731
    assert warm(lambda: section(reader), reader) == {"n": 1}
    warm(all_keys, reader)
    assert warm(lambda: one(reader, events.CLIENT_GET, client_id="app"), reader) is not None
    assert warm(lambda: one(reader, events.USER_GET, username="alice"), reader).password == HASH
    heard = notices_heard(cache_of(reader))

    store(writer, {"n": 2})
    within_bound(lambda: section(reader) == {"n": 2})
    # A key rotated by the operator's lifecycle command (no adapter: the trigger tells).
    rotated = Host(writer).keys.rotate("omejdn", "omejdn")
    within_bound(lambda: rotated.kid in kids(all_keys()))
    writer.fire(events.CLIENT_DELETE, client_id="app")
    within_bound(lambda: one(reader, events.CLIENT_GET, client_id="app") is None)
    alice = one(writer, events.USER_GET, username="alice")
    writer.fire(events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=alice, password="n3w-secret")
    within_bound(lambda: one(reader, events.USER_GET, username="alice").password != HASH)

    # How late a notice arrives is no promise (a late one makes the cache step aside):
    # only that each change is heard, and measured, is.
    changes = {
        ("config", ("omejdn",)),
        ("keys", ("omejdn", "omejdn")),
        ("client", ("app",)),
        ("user", ("alice",)),
    }
    until(
        lambda: changes <= {(notice.group, notice.key) for notice in heard},
        "a change was never heard",
    )
    assert cache_of(reader).stats()["staleness_ms"]["samples"] >= len(changes)


def test_a_killed_listener_mid_stream_never_serves_beyond_the_bound(
    open_loader: Callable[..., PluginLoader], plain_sql: PlainSQL
) -> None:
    """Writes every 10 ms in one loader, reads in a loop in another, whose listener
    connection is terminated every 0.8 s: no read begun ``BOUND`` after a commit returned
    answers with what that commit replaced."""
    reader = open_loader(CACHE)
    writer = open_loader(OFF)
    store(writer, {"n": 0})
    warm(lambda: section(reader), reader)
    cache = cache_of(reader)
    before = cache.stats()
    committed: list[float] = [time.monotonic()]  # committed[i]: when n = i had committed
    stop = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                store(writer, {"n": n})
                committed.append(time.monotonic())
                time.sleep(0.01)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    worst = 0.0
    kills = 0
    give_up = time.monotonic() + 60
    try:
        deadline = time.monotonic() + 4.0
        next_kill = time.monotonic() + 0.5
        # At least 4 s and 3 kills, and the cache must have served meanwhile: a busy
        # machine only makes it take longer.
        while time.monotonic() < deadline or kills < 3 or cache.stats()["hits"] == before["hits"]:
            assert time.monotonic() < give_up, cache.stats()
            asked = time.monotonic()
            n = section(reader)["n"]
            # The value read was outdated once n + 1 committed; how long before we asked?
            if n + 1 < len(committed):
                worst = max(worst, served_late(asked, committed[n + 1]))
            if time.monotonic() >= next_kill:
                connects = cache.stats()["connects"]
                kill_listener(plain_sql)
                kills += 1
                # The listener comes back by itself (and is listening before the next kill).
                until(
                    lambda connects=connects: cache.stats()["connects"] > connects,
                    "the listener never came back",
                )
                next_kill = time.monotonic() + 0.8
    finally:
        stop.set()
        thread.join()
    assert not failures
    final = len(committed) - 1
    fresh_within(BOUND, lambda: section(reader)["n"] == final, since=committed[final])
    assert worst < BOUND, worst
    # Every kill was noticed: a reconnect, and its flush, each.
    stats = cache.stats()
    assert stats["connects"] >= before["connects"] + kills, stats
    assert stats["flushes"] >= before["flushes"] + kills, stats


def test_a_change_without_its_notice_is_caught_by_the_counter(
    open_loader: Callable[..., PluginLoader], plain_sql: PlainSQL
) -> None:
    """A transaction counted as omejdn_pg_count() counts, whose NOTIFY never arrives (a
    lost notice): the listener's poll finds the session's counter row at a value its chain
    of notices does not reach and flushes within the bound. A second such change is
    caught too — by the poll, or by the session's next notice, whose prior link was never
    heard, whichever comes first."""
    reader = open_loader(CACHE)
    writer = open_loader(OFF)
    store(writer, {"n": 1})
    assert warm(lambda: section(reader), reader) == {"n": 1}
    cache = cache_of(reader)
    heard = notices_heard(cache)
    behind = heartbeats(cache).behind
    lost = (
        "UPDATE omejdn_pg_changes SET prior = counter, "
        "counter = nextval('omejdn_pg_change_seq'), xact = pg_current_xact_id()::text::bigint, "
        "announced = '{}', changed_at = clock_timestamp() "
        "WHERE name = 'config' AND writer = pg_backend_pid()"
    )

    with psycopg.connect(plain_sql.settings.conninfo()) as conn:
        row = ("config", conn.info.backend_pid)

        def notices_of_this_session() -> list[Notice]:
            return [n for n in heard if n.link is not None and n.link.writer == row[1]]

        conn.execute("SELECT omejdn_pg_changed('config', 'unrelated')")  # heard: its row
        conn.commit()
        until(notices_of_this_session, "the session's first notice never came")
        conn.execute("UPDATE configuration_omejdn SET value = '2' WHERE key = 'n'")
        assert conn.execute(lost).rowcount == 1  # counted, no NOTIFY
        conn.commit()
        within_bound(lambda: section(reader) == {"n": 2})
        until(lambda: row in behind, "no poll found the session's row behind its notices")
        assert len(notices_of_this_session()) == 1  # the poll caught it, no notice
        assert warm(lambda: section(reader), reader) == {"n": 2}  # cached again

        gaps = cache.stats()["gaps"]
        caught = len(behind)
        conn.execute("UPDATE configuration_omejdn SET value = '3' WHERE key = 'n'")
        conn.execute(lost)
        conn.commit()
        committed = time.monotonic()
        conn.execute("SELECT omejdn_pg_changed('config', 'unrelated')")
        conn.commit()
        fresh_within(BOUND, lambda: section(reader) == {"n": 3}, since=committed)
        until(
            lambda: cache.stats()["gaps"] > gaps or row in behind[caught:],
            "the second lost notice was never noticed",
        )


def test_hand_sql_on_keys_is_announced_by_the_trigger(
    open_loader: Callable[..., PluginLoader], plain_sql: PlainSQL
) -> None:
    reader = open_loader(CACHE)
    writer = open_loader(OFF)
    writer.fire(events.KEYS_STORE, target_type="omejdn", target="omejdn", jwks=jwks())
    load = lambda: one(reader, events.KEYS_LOAD, target_type="omejdn", target="omejdn")  # noqa: E731
    assert warm(load, reader) is not None
    plain_sql.execute("DELETE FROM keys WHERE target_type = 'omejdn'")
    within_bound(lambda: load() is None)


OTHER_HASH = "$2a$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW"


def test_hand_sql_on_users_clients_and_attributes_is_announced_by_their_triggers(
    open_loader: Callable[..., PluginLoader], plain_sql: PlainSQL
) -> None:
    """As a Ruby Omejdn sharing the database or psql would write: no omejdn_pg_changed()."""
    reader = open_loader(EVERYTHING)
    writer = open_loader(OFF)
    alice = User("alice", HASH, attributes={"role": "staff"})
    writer.fire(events.USER_CREATE, user=alice, user_backend="postgres")
    app = Client(metadata={"client_id": "app", "client_name": "App"})
    writer.fire(events.CLIENT_CREATE, client=app, client_backend="postgres")
    user = lambda: one(reader, events.USER_GET, username="alice")  # noqa: E731
    client = lambda: one(reader, events.CLIENT_GET, client_id="app")  # noqa: E731
    assert warm(user, reader).password == HASH
    assert warm(client, reader).metadata["client_name"] == "App"

    plain_sql.execute("UPDATE users SET password = %s WHERE username = 'alice'", (OTHER_HASH,))
    within_bound(lambda: user().password == OTHER_HASH)
    warm(user, reader)
    plain_sql.execute(
        "UPDATE attributes SET value = '\"admin\"' WHERE identifier = 'alice' AND key = 'role'"
    )
    within_bound(lambda: user().attributes == {"role": "admin"})
    plain_sql.execute(
        "UPDATE clients SET value = '\"Renamed\"' WHERE client_id = 'app' AND key = 'client_name'"
    )
    within_bound(lambda: client().metadata["client_name"] == "Renamed")
    warm(client, reader)
    plain_sql.execute("DELETE FROM clients WHERE client_id = 'app'")
    within_bound(lambda: client() is None)
    warm(user, reader)
    plain_sql.execute("TRUNCATE attributes")
    within_bound(lambda: user().attributes == {})


def test_the_packages_own_writes_drop_only_what_they_changed(
    open_loader: Callable[..., PluginLoader],
) -> None:
    """The triggers announce what a statement changed, key by key: one user, not all.
    A change of alice is heard as notices naming alice alone, and bob's entry outlives
    it. A round in which the cache flushed or stepped aside for a reason of its own (a
    heartbeat late on a busy machine) proves nothing about bob, and is played again."""
    reader = open_loader(EVERYTHING)
    writer = open_loader(OFF)
    cache = cache_of(reader)
    heard = notices_heard(cache)
    for name in ("alice", "bob"):
        writer.fire(events.USER_CREATE, user=User(name, HASH), user_backend="postgres")

    def read(name: str) -> User:
        found = one(reader, events.USER_GET, username=name)
        assert isinstance(found, User)
        return found

    def keys_heard(start: int) -> set[tuple[str, ...] | None]:
        return {notice.key for notice in heard[start:] if notice.group == "user"}

    # Notices come in commit order: once both creations are heard, what follows is newer.
    until(lambda: keys_heard(0) == {("alice",), ("bob",)}, "the creations were never heard")
    for attempt in range(20):
        alice = warm(lambda: read("alice"), reader)
        warm(lambda: read("bob"), reader)
        before = cache.stats()
        start = len(heard)
        role = f"admin-{attempt}"
        changed = User("alice", HASH, attributes={"role": role}, backend="postgres")
        writer.fire(events.USER_UPDATE, user=changed)
        within_bound(lambda role=role: read("alice").attributes == {"role": role})
        assert alice.attributes == ({} if attempt == 0 else {"role": f"admin-{attempt - 1}"})
        until(lambda start=start: keys_heard(start), "alice's change was never heard")
        assert keys_heard(start) == {("alice",)}
        statements = count_statements(plugin(reader).database.engine)
        assert read("bob").username == "bob"
        after = cache.stats()
        if all(after[count] == before[count] for count in ("flushes", "bypassed", "connects")):
            assert statements == []  # bob's entry was not dropped with alice's change
            return
    raise AssertionError(f"every round saw the cache flushed or stepped aside: {after}")


# --- a listener that cannot hear ------------------------------------------------------------


@pytest.fixture
def listener_role(server: ConnectionSettings, database: ConnectionSettings) -> Iterator[str]:
    """A role of its own for the listener, so that it alone can be locked out."""
    role = f"omejdn_pg_listener_{uuid.uuid4().hex[:8]}"
    admin = PlainSQL(server)
    admin.execute(f"CREATE ROLE {role} LOGIN")
    PlainSQL(database).execute(f"GRANT SELECT ON omejdn_pg_changes TO {role}")
    try:
        yield role
    finally:
        PlainSQL(database).execute(f"DROP OWNED BY {role}")
        for (pid,) in admin.rows("SELECT pid FROM pg_stat_activity WHERE usename = %s", (role,)):
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        admin.execute(f"DROP ROLE {role}")


def test_a_listener_that_cannot_reconnect_steps_aside(
    listener_role: str,
    open_loader: Callable[..., PluginLoader],
    plain_sql: PlainSQL,
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        psycopg.connect(plain_sql.settings.with_params(user=listener_role).conninfo()).close()
    except psycopg.OperationalError:
        pytest.skip("the test server lets no new role log in without a password")
    reader = open_loader(
        f"{{max_staleness: {BOUND}, listen_connection: {{user: {listener_role}}}}}", wait=False
    )
    cache = cache_of(reader)
    assert cache.wait_until_serving(GIVE_UP), cache.stats()
    writer = open_loader(OFF)
    store(writer, {"n": 1})
    assert warm(lambda: section(reader), reader) == {"n": 1}

    plain_sql.execute(f"ALTER ROLE {listener_role} CONNECTION LIMIT 0")
    kill_listener(plain_sql, listener_role)
    store(writer, {"n": 2})
    within_bound(lambda: section(reader) == {"n": 2})

    # Stepped aside: every read goes to the database, and stays there. No heartbeat
    # can have been answered since the kill, so a bound later nothing is served.
    time.sleep(BOUND)
    until(lambda: not cache.stats()["listener_connected"], "the kill went unnoticed")
    stats = cache.stats()
    assert not stats["serving"]
    assert stats["step_asides"] >= 1

    # An outage longer than the bound is said at WARNING: the cache is off.
    def warned() -> bool:
        return any(
            r.levelname == "WARNING"
            and r.getMessage().startswith("read cache:")
            and "reads go to the database" in r.getMessage()
            for r in caplog.records
        )

    until(warned, "no WARNING of the outage")
    statements = count_statements(plugin(reader).database.engine)
    for _ in range(5):
        assert section(reader) == {"n": 2}
    assert len(statements) == 5
    assert cache.stats()["bypassed"] >= stats["bypassed"] + 5
    store(writer, {"n": 3})
    assert section(reader) == {"n": 3}

    # Let it back in: it reconnects, flushes, and serves again.
    plain_sql.execute(f"ALTER ROLE {listener_role} CONNECTION LIMIT -1")
    assert cache.wait_until_serving(GIVE_UP), cache.stats()
    assert warm(lambda: section(reader), reader) == {"n": 3}
    assert cache.stats()["connects"] >= stats["connects"] + 1


def _backend_process(pid: int) -> bool:
    """Whether ``pid`` is a PostgreSQL backend on this machine that we may signal."""
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_a_stalled_listener_steps_aside_and_comes_back(
    open_loader: Callable[..., PluginLoader], plain_sql: PlainSQL
) -> None:
    """The listener's server process is frozen (SIGSTOP) — alive, connected, silent:
    past the bound the cache serves nothing; thawed, it catches up and serves again."""
    reader = open_loader(CACHE)
    writer = open_loader(OFF)
    store(writer, {"n": 1})
    assert warm(lambda: section(reader), reader) == {"n": 1}
    (pid,) = listener_pids(plain_sql)
    if not _backend_process(pid):
        pytest.skip("the test server runs on another machine: its processes cannot be frozen")
    os.kill(pid, signal.SIGSTOP)
    try:
        store(writer, {"n": 2})
        within_bound(lambda: section(reader) == {"n": 2})
        stats = cache_of(reader).stats()
        assert not stats["serving"]
        assert stats["step_asides"] >= 1
        assert stats["listener_connected"]  # it never noticed: only the bound protected us
    finally:
        os.kill(pid, signal.SIGCONT)
    assert cache_of(reader).wait_until_serving(GIVE_UP)
    assert warm(lambda: section(reader), reader) == {"n": 2}


def test_a_server_restart_flushes_what_was_cached(tmp_path: Path) -> None:
    """The server goes away under a serving cache and comes back; a write lands before
    the listener is back: the reconnect's flush makes sure it is not missed."""
    import pgserver

    from omejdn_pg.postgres import migrate

    # Not under tmp_path: as root, pgserver runs postgres as a user that must reach it.
    data = Path(tempfile.mkdtemp(prefix="omejdn-pg-test-cache-restart-"))
    servers = [pgserver.get_server(data, cleanup_mode="stop")]
    try:
        settings = ConnectionSettings.from_url(servers[0].get_uri())
        migrate.upgrade(settings)
        reader = PluginLoader.from_files(
            [plugin_file(tmp_path / "reader.yml", settings, cache=CACHE)], base_dir=tmp_path
        )
        writer = PluginLoader.from_files(
            [plugin_file(tmp_path / "writer.yml", settings, cache=OFF)], base_dir=tmp_path
        )
        with reader, writer:
            cache = cache_of(reader)
            assert cache.wait_until_serving(GIVE_UP)
            store(writer, {"n": 1})
            assert warm(lambda: section(reader), reader) == {"n": 1}
            connects = cache.stats()["connects"]

            servers[0].cleanup()
            servers[0] = pgserver.get_server(data, cleanup_mode="stop")
            store(writer, {"n": 2})  # most likely before the listener is back
            within_bound(lambda: section(reader) == {"n": 2})
            assert cache.wait_until_serving(GIVE_UP)
            assert warm(lambda: section(reader), reader) == {"n": 2}
            stats = cache.stats()
            assert stats["connects"] == connects + 1
            assert stats["step_asides"] >= 1
    finally:
        servers[0].cleanup()
        shutil.rmtree(data, ignore_errors=True)


# --- lifecycle and the SQL side ---------------------------------------------------------------


def test_close_stops_the_listener_and_its_connection(
    database: ConnectionSettings, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    path = plugin_file(tmp_path / "plugins.yml", database, cache=CACHE)
    loader = PluginLoader.from_files([path], base_dir=tmp_path)
    cache = cache_of(loader)
    assert cache.wait_until_serving(GIVE_UP)
    thread = cache._listener._thread
    assert thread.daemon
    assert thread.is_alive()
    assert len(listener_pids(plain_sql)) == 1
    loader.close()
    assert not thread.is_alive()
    assert plugin(loader).cache is None
    until(lambda: listener_pids(plain_sql) == [], "the listener's connection stays")


def test_the_change_function_bumps_once_and_notifies_on_commit(plain_sql: PlainSQL) -> None:
    conninfo = plain_sql.settings.conninfo()
    with psycopg.connect(conninfo, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with psycopg.connect(conninfo) as conn:
            writer = conn.info.backend_pid
            counters = {
                conn.execute("SELECT omejdn_pg_changed('user', %s)", (f"u{i}",)).fetchall()[0][0]
                for i in range(70)
            }
        assert len(counters) == 1
        (counter,) = counters
        with psycopg.connect(conninfo) as conn:  # rolled back: nothing counted, nothing sent
            conn.execute("SELECT omejdn_pg_changed('user', 'ghost')")
            conn.rollback()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT omejdn_pg_changed('keys', 'clients', 'a/b')")
            conn.execute("SELECT omejdn_pg_changed('config')")
        received = [n.payload for n in listener.notifies(timeout=2.0, stop_after=66)]
    users = [payload for payload in received if payload.startswith("user:")]
    assert len(users) == 64
    assert users[0].startswith(f"user:u0:{writer}//{counter}:")  # the session's first count
    assert users[62].startswith(f"user:u62:{writer}//{counter}:")
    assert users[63].startswith(f"user:*:{writer}//{counter}:")  # the rest as the whole group
    assert not [payload for payload in received if "ghost" in payload]
    assert [p.rsplit(":", 2)[0] for p in received if not p.startswith("user:")] == [
        "keys:clients/a%2Fb",
        "config:*",
    ]
    assert plain_sql.rows(
        "SELECT writer, counter, prior FROM omejdn_pg_changes WHERE name = 'user'"
    ) == [(writer, counter, None)]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown group"):
        plain_sql.execute("SELECT omejdn_pg_changed('sessions', 'x')")
