"""Many writers of one group: none waits for another, and no cache serves a change late.

Each writing session counts its changes on a row of its own (revision 0005), so
these tests hold a writer of a group open while others of the same group
commit, which they can only do if they wait for nobody; and they check the
read cache's bound while 16 writers commit at once and the reader's listener
loses notices on purpose. The bound is asserted exactly, never with a margin
(:mod:`tests.kits.staleness`): a stale answer fails only if its read began
``BOUND`` or more after the commit it missed had returned.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres.cache.changes import publish_change
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.repositories.clients import ClientRepository
from omejdn_pg.postgres.repositories.config import ConfigRepository
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.postgres.repositories.users import UserRepository
from tests.kits.plugins import cache_of, plugin
from tests.kits.staleness import GIVE_UP, fresh_within, heartbeats, served_late, until
from tests.kits.witness import PlainSQL

BOUND = 0.5
WRITERS = 16
HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"


def user_get(loader: PluginLoader, name: str) -> User | None:
    (answer,) = loader.fire(events.USER_GET, username=name)
    return answer  # type: ignore[no-any-return]


def names() -> list[str]:
    return [f"writer-{n:02d}" for n in range(WRITERS)]


@pytest.fixture
def open_pooled(open_loader: Callable[..., PluginLoader]) -> Callable[[str], PluginLoader]:
    """Loaders whose pool has a connection for every writer: none waits for one. Their
    lock waits are unbounded, so that a write waiting for another shows as a write that
    never ends while the other is held, whatever the load, never as a lock timeout."""
    pool = f"      pool: {{size: {WRITERS + 2}, max_overflow: 0}}\n      lock_timeout: 0\n"
    return functools.partial(open_loader, backend=pool)


def waiting_locks(sql: PlainSQL) -> list[tuple[Any, ...]]:
    return sql.rows(
        "SELECT locktype, relation::regclass::text, mode, pid FROM pg_locks "
        "WHERE NOT granted AND database = (SELECT oid FROM pg_database "
        "WHERE datname = current_database())"
    )


def join_all(threads: list[threading.Thread], sql: PlainSQL) -> None:
    """Join ``threads``; one still running after :data:`GIVE_UP` is reported with the lock
    waits of the moment (a writer that waits for another never finishes while it holds)."""
    deadline = time.monotonic() + GIVE_UP
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [thread.name for thread in threads if thread.is_alive()]
    assert not stuck, (stuck, waiting_locks(sql))


def test_writers_of_one_group_do_not_wait_for_each_other(
    open_pooled: Callable[[str], PluginLoader], plain_sql: PlainSQL
) -> None:
    """A user write of the package holds its transaction open after announcing its
    change; 15 writes of other users through the package, and 15 more by hand SQL (as a
    Ruby Omejdn would: the triggers announce them) commit meanwhile. None could finish if
    it waited for the open one, however busy the machine; and nobody waits in pg_locks."""
    writer = open_pooled("false")
    backend = plugin(writer)
    hand_names = [f"by-hand-{n:02d}" for n in range(WRITERS - 1)]
    for name in names() + hand_names:
        writer.fire(events.USER_CREATE, user=User(name, HASH), user_backend="postgres")
    first, *others = names()
    announced, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        UserRepository(conn, backend.policy).update(User(first, HASH, extern="held"))
        publish_change(conn, "user", (first,))
        announced.set()
        assert release.wait(GIVE_UP)

    holder = threading.Thread(target=lambda: backend.database.write(hold))
    holder.start()
    try:
        assert announced.wait(GIVE_UP)
        failures: list[BaseException] = []

        def by_package(name: str) -> None:
            try:
                changed = User(name, HASH, attributes={"n": 1}, backend="postgres")
                writer.fire(events.USER_UPDATE, user=changed)
            except BaseException as error:
                failures.append(error)

        def by_hand(name: str) -> None:
            try:
                with psycopg.connect(plain_sql.settings.conninfo()) as conn:
                    conn.execute("UPDATE users SET extern = 'x' WHERE username = %s", (name,))
            except BaseException as error:
                failures.append(error)

        threads = [
            threading.Thread(target=by_package, args=(name,), name=name) for name in others
        ] + [threading.Thread(target=by_hand, args=(name,), name=name) for name in hand_names]
        for thread in threads:
            thread.start()
        join_all(threads, plain_sql)
        assert not failures, failures
        assert holder.is_alive()  # all of that while the first write is still open
        assert plain_sql.value("SELECT extern FROM users WHERE username = %s", (first,)) is None
        assert waiting_locks(plain_sql) == []
    finally:
        release.set()
        holder.join(GIVE_UP)
    assert user_get(writer, first).extern == "held"  # type: ignore[union-attr]
    assert plain_sql.value("SELECT count(*) FROM users WHERE extern = 'x'") == WRITERS - 1
    writers = plain_sql.value(
        "SELECT count(DISTINCT writer) FROM omejdn_pg_changes WHERE name = 'user'"
    )
    assert writers >= 3


class GroupWrites:
    """Writes of one key of a group, by the package's event and on an open transaction,
    and what a read of it shows; each write leaves ``version`` behind to be read back."""

    def __init__(self, group: str) -> None:
        self.group = group

    def announced_key(self, key: str) -> tuple[str, ...]:
        return ("omejdn", key) if self.group == "keys" else (key,)

    def create(self, loader: PluginLoader, key: str) -> None:
        if self.group == "client":
            client = Client(metadata={"client_id": key, "version": 0})
            loader.fire(events.CLIENT_CREATE, client=client, client_backend="postgres")
        else:
            self.by_event(loader, key, 0)

    def by_event(self, loader: PluginLoader, key: str, version: int) -> None:
        if self.group == "config":
            loader.fire(events.CONFIGURATION_STORE, section=key, data={"version": version})
        elif self.group == "keys":
            jwks = KeySet([KEYS[version]]).to_jwks(private=True)
            loader.fire(events.KEYS_STORE, target_type="omejdn", target=key, jwks=jwks)
        else:
            loader.fire(events.CLIENT_UPDATE, client=self._client(key, version))

    def on_transaction(self, conn: Connection, key: str, version: int) -> None:
        if self.group == "config":
            ConfigRepository(conn).store(key, {"version": version})
        elif self.group == "keys":
            KeyRepository(conn).store("omejdn", key, KeySet([KEYS[version]]))
        else:
            ClientRepository(conn).update(self._client(key, version))

    def read(self, loader: PluginLoader, key: str) -> int | None:
        if self.group == "config":
            (found,) = loader.fire(events.CONFIGURATION_LOAD, section=key, fallback=None)
            return None if found is None else int(found["version"])
        if self.group == "keys":
            (found,) = loader.fire(events.KEYS_LOAD, target_type="omejdn", target=key, create=False)
            return None if found is None else KEY_VERSIONS[found["keys"][0]["kid"]]
        (found,) = loader.fire(events.CLIENT_GET, client_id=key)
        return None if found is None else int(found.metadata["version"])

    @staticmethod
    def _client(key: str, version: int) -> Client:
        return Client(metadata={"client_id": key, "version": version}, backend="postgres")


KEYS = [generate_key("ES256") for _ in range(3)]
"""The key set of version n is ``KEYS[n]`` alone."""
KEY_VERSIONS = {key.kid: version for version, key in enumerate(KEYS)}


@pytest.mark.parametrize("group", ["config", "keys", "client"])
def test_a_writer_holding_its_transaction_open_delays_no_writer_of_its_group(
    group: str, open_pooled: Callable[[str], PluginLoader], plain_sql: PlainSQL
) -> None:
    """Writer A of ``group`` has written and announced its change — its counter row stays
    locked until it ends — and holds its transaction open; writers B of the same group,
    each on a key of its own, commit meanwhile, which none could if it waited for A. When
    A commits too, a cache that had every key cached serves none of them stale past the
    bound. (Users: the test above.)"""
    writes = GroupWrites(group)
    writer = open_pooled("false")
    reader = open_pooled(f"{{max_staleness: {BOUND}, client: true}}")
    backend = plugin(writer)
    keys = [f"{group}_{n}" for n in range(4)]
    for key in keys:  # tables, rows and key sets exist: what follows only changes them
        writes.create(writer, key)
    cache = cache_of(reader)
    for key in keys:

        def cached(key: str = key) -> bool:
            hits = cache.stats()["hits"]
            return writes.read(reader, key) == 0 and cache.stats()["hits"] > hits

        until(cached, f"{key} never served from the cache")
    held, *others = keys
    announced, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        writes.on_transaction(conn, held, 1)
        publish_change(conn, group, writes.announced_key(held))
        announced.set()
        assert release.wait(GIVE_UP)

    holder = threading.Thread(target=lambda: backend.database.write(hold))
    holder.start()
    committed: dict[str, float] = {}
    try:
        assert announced.wait(GIVE_UP)
        failures: list[BaseException] = []

        def other(key: str) -> None:
            try:
                writes.by_event(writer, key, 2)
                committed[key] = time.monotonic()
            except BaseException as error:
                failures.append(error)

        threads = [threading.Thread(target=other, args=(key,), name=key) for key in others]
        for thread in threads:
            thread.start()
        join_all(threads, plain_sql)
        assert not failures, failures
        assert holder.is_alive()  # all of them committed while A was open
        assert writes.read(writer, held) == 0  # and A had not
        assert waiting_locks(plain_sql) == []
    finally:
        release.set()
        holder.join(GIVE_UP)
    committed[held] = time.monotonic()
    assert not holder.is_alive()
    assert writes.read(writer, held) == 1
    for key in keys:
        version = 1 if key == held else 2
        fresh_within(
            BOUND,
            lambda key=key, version=version: writes.read(reader, key) == version,
            since=committed[key],
            what=key,
        )


def test_sixteen_writers_never_leave_a_cache_stale_beyond_the_bound(
    open_pooled: Callable[[str], PluginLoader],
) -> None:
    """16 threads rewrite 16 users as fast as they can; another loader reads them through
    its cache, whose listener drops one notice in five on the floor. No read begun
    ``BOUND`` after a commit returned answers with what that commit replaced. It goes on
    for 3 s, and until the cache has served hits and its polls have caught lost notices
    (a busy machine only makes that take longer). Then, with every user cached, the 16
    write once more at the same moment and every one of those notices is lost: the chains
    of counters alone bring the cache up to date within the bound."""
    reader = open_pooled(f"{{max_staleness: {BOUND}, user: true}}")
    writer = open_pooled("false")
    for name in names():
        writer.fire(
            events.USER_CREATE,
            user=User(name, HASH, attributes={"n": 0}),
            user_backend="postgres",
        )
    cache = cache_of(reader)
    heard = cache.on_notice
    dropped = [0]
    loss = [0.2]
    lottery = random.Random(7)

    def lossy(payload: str) -> None:
        if payload.startswith("user:") and lottery.random() < loss[0]:
            dropped[0] += 1
            return
        heard(payload)

    cache.on_notice = lossy  # type: ignore[method-assign]
    polls = heartbeats(cache)
    statements = count_statements(plugin(reader).database.engine)
    # committed[name][n]: when n had committed (n = 0 before the test starts).
    committed: dict[str, list[float]] = {name: [time.monotonic()] for name in names()}
    stop = threading.Event()
    failures: list[BaseException] = []

    def write(name: str) -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                changed = User(name, HASH, attributes={"n": n}, backend="postgres")
                writer.fire(events.USER_UPDATE, user=changed)
                committed[name].append(time.monotonic())
        except BaseException as error:
            failures.append(error)

    def writes() -> int:
        return sum(len(times) - 1 for times in committed.values())

    def proven() -> bool:
        """Enough happened for the reads to mean something."""
        return (
            writes() >= WRITERS * 5
            and stale_hits[0] > 0
            and dropped[0] > 0
            and any(group == "user" for group, _ in polls.behind)
        )

    threads = [threading.Thread(target=write, args=(name,)) for name in names()]
    for thread in threads:
        thread.start()
    worst = 0.0
    stale_hits = [0]
    """Answers the cache gave after what replaced them had committed: the bound has work."""
    reads = 0
    try:
        start = time.monotonic()
        while time.monotonic() - start < 3.0 or not proven():
            assert time.monotonic() - start < GIVE_UP, (writes(), dropped, cache.stats())
            assert not failures, failures
            name = names()[reads % WRITERS]
            asked = time.monotonic()
            sent = len(statements)
            found = user_get(reader, name)
            assert found is not None
            n = found.attributes["n"]
            later = committed[name]
            # The value read was outdated once n + 1 committed: how long before we asked?
            if n + 1 < len(later):
                worst = max(worst, served_late(asked, later[n + 1]))
                stale_hits[0] += len(statements) == sent  # from the cache: no statement
            reads += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    assert worst < BOUND, (worst, stale_hits, cache.stats())

    # Every user served from the cache, then one more write each, all notices lost.
    def cached(name: str) -> bool:
        user_get(reader, name)
        return ("user", name) in cache._entries

    for name in names():
        until(lambda name=name: cached(name), f"{name} never cached")
    loss[0] = 1.0
    caught = len(polls.behind)
    barrier = threading.Barrier(WRITERS)
    final = {name: len(committed[name]) for name in names()}
    last: dict[str, float] = {}

    def last_write(name: str) -> None:
        try:
            barrier.wait(GIVE_UP)
            changed = User(name, HASH, attributes={"n": final[name]}, backend="postgres")
            writer.fire(events.USER_UPDATE, user=changed)
            last[name] = time.monotonic()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=last_write, args=(name,)) for name in names()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(GIVE_UP)
    assert not failures, failures
    assert sorted(last) == names()
    for name in names():
        fresh_within(
            BOUND,
            lambda name=name: user_get(reader, name).attributes["n"] == final[name],  # type: ignore[union-attr]
            since=last[name],
            what=name,
        )
    # Not a flush for a reason of the cache's own: its polls found the writers' rows behind.
    until(
        lambda: any(group == "user" for group, _ in polls.behind[caught:]),
        "no poll found the rows of the lost notices",
    )


def test_no_session_can_silence_the_announcement_of_its_change(
    open_pooled: Callable[[str], PluginLoader], plain_sql: PlainSQL
) -> None:
    """0004 let any session set ``omejdn_pg.self_announcing=on`` and change users unheard;
    now only the keys a transaction announced itself are spared a notice — whatever a
    session sets, announces for another user, or creates as a temporary table."""
    reader = open_pooled(f"{{max_staleness: {BOUND}, user: true}}")
    writer = open_pooled("false")
    for name in ("alice", "bob"):
        writer.fire(events.USER_CREATE, user=User(name, HASH), user_backend="postgres")

    def warm(name: str) -> None:
        def cached() -> bool:
            user_get(reader, name)
            return ("user", name) in cache_of(reader)._entries

        until(cached, f"{name} never cached")

    conninfo = plain_sql.settings.conninfo()
    for attempt, setup in enumerate(
        (
            ["SET omejdn_pg.self_announcing = on", "SET omejdn_pg.change_user = '99:64'"],
            ["SELECT omejdn_pg_changed('user', 'bob')"],
            [
                "CREATE TEMP TABLE omejdn_pg_changes (LIKE public.omejdn_pg_changes)",
                "SET search_path = pg_temp, public",
            ],
        )
    ):
        warm("alice")
        with psycopg.connect(conninfo, options="-c omejdn_pg.self_announcing=on") as conn:
            for statement in setup:
                conn.execute(statement)
            conn.execute(
                "UPDATE public.users SET extern = %s WHERE username = 'alice'", (f"v{attempt}",)
            )
        fresh_within(
            BOUND,
            lambda value=f"v{attempt}": (user_get(reader, "alice") or User("?")).extern == value,
        )


def test_rows_idle_for_two_hours_are_pruned_and_a_new_row_is_still_followed(
    open_pooled: Callable[[str], PluginLoader], plain_sql: PlainSQL
) -> None:
    """Pruning keeps the counters as many rows as recent writing sessions; a session whose
    row was pruned starts a new one (its values still above the old ones), and a change it
    counts without its notice is still caught by the next poll."""
    reader = open_pooled(f"{{max_staleness: {BOUND}, user: true}}")
    writer = open_pooled("false")
    writer.fire(events.USER_CREATE, user=User("alice", HASH), user_backend="postgres")
    cache = cache_of(reader)
    polls = heartbeats(cache)
    conninfo = plain_sql.settings.conninfo()
    with psycopg.connect(conninfo, autocommit=True) as session:
        session.execute("SELECT omejdn_pg_changed('user', 'nobody')")
        pid = session.info.backend_pid
        (before,) = session.execute(
            "SELECT counter FROM omejdn_pg_changes WHERE name = 'user' AND writer = %s", (pid,)
        ).fetchone()  # type: ignore[misc]
        plain_sql.execute("UPDATE omejdn_pg_changes SET changed_at = now() - interval '3 hours'")
        assert plain_sql.value("SELECT omejdn_pg_changes_prune()") >= 1
        assert plain_sql.value("SELECT count(*) FROM omejdn_pg_changes") == 0
        pruned = len(polls.polled)
        until(lambda: {} in polls.polled[pruned:], "the reader never polled the empty table")

        def cached() -> bool:
            user_get(reader, "alice")
            return ("user", "alice") in cache._entries

        until(cached, "alice never cached")
        # The pruned session counts again, and this time its notice is lost.
        heard = cache.on_notice
        cache.on_notice = lambda payload: None if payload.startswith("user:") else heard(payload)  # type: ignore[method-assign]
        session.execute("UPDATE users SET extern = 'pruned' WHERE username = 'alice'")
        committed = time.monotonic()
        row = session.execute(
            "SELECT counter, prior FROM omejdn_pg_changes WHERE name = 'user' AND writer = %s",
            (pid,),
        ).fetchone()
        assert row is not None
        assert row[0] > before
        assert row[1] is None  # a new row
    fresh_within(
        BOUND,
        lambda: (user_get(reader, "alice") or User("?")).extern == "pruned",
        since=committed,
    )
    until(lambda: ("user", pid) in polls.behind, "no poll found the new row behind")
