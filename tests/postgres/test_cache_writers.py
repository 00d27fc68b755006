"""Many writers of one group: none waits for another, and no cache serves a change late.

Each writing session counts its changes on a row of its own (revision 0005), so
these tests hold writers of one group open against each other and check, in
``pg_locks``, that nobody waits; and they check the read cache's bound while 16
writers commit at once and the reader's listener loses notices on purpose.
Timings are asserted only against the bound, with a generous margin: the
machine is shared.
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

from omejdn_pg import PluginLoader, User
from omejdn_pg.host import events
from omejdn_pg.postgres.cache.changes import publish_change
from omejdn_pg.postgres.repositories.users import UserRepository
from tests.kits.plugins import cache_of, plugin
from tests.kits.witness import PlainSQL

BOUND = 0.5
MARGIN = 1.0
WRITERS = 16
HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"


def user_get(loader: PluginLoader, name: str) -> User | None:
    (answer,) = loader.fire(events.USER_GET, username=name)
    return answer  # type: ignore[no-any-return]


def names() -> list[str]:
    return [f"writer-{n:02d}" for n in range(WRITERS)]


@pytest.fixture
def open_pooled(open_loader: Callable[..., PluginLoader]) -> Callable[[str], PluginLoader]:
    """Loaders whose pool has a connection for every writer: none waits for one."""
    pool = f"      pool: {{size: {WRITERS + 2}, max_overflow: 0}}\n"
    return functools.partial(open_loader, backend=pool)


def waiting_locks(sql: PlainSQL) -> list[tuple[Any, ...]]:
    return sql.rows(
        "SELECT locktype, relation::regclass::text, mode, pid FROM pg_locks "
        "WHERE NOT granted AND database = (SELECT oid FROM pg_database "
        "WHERE datname = current_database())"
    )


def test_writers_of_one_group_do_not_wait_for_each_other(
    open_pooled: Callable[[str], PluginLoader], plain_sql: PlainSQL
) -> None:
    """A user write of the package holds its transaction open after announcing its
    change; 15 writes of other users — the package's, and hand SQL announcing itself with
    a lock_timeout of one second — commit meanwhile, and nobody waits in pg_locks."""
    writer = open_pooled("false")
    backend = plugin(writer)
    for name in names():
        writer.fire(events.USER_CREATE, user=User(name, HASH), user_backend="postgres")
    first, *others = names()
    announced, release = threading.Event(), threading.Event()

    def hold(conn: Connection) -> None:
        UserRepository(conn, backend.policy).update(User(first, HASH, extern="held"))
        publish_change(conn, "user", (first,))
        announced.set()
        assert release.wait(30)

    holder = threading.Thread(target=lambda: backend.database.write(hold))
    holder.start()
    try:
        assert announced.wait(10)
        start = time.monotonic()
        package = [
            threading.Thread(
                target=lambda name=name: writer.fire(
                    events.USER_UPDATE,
                    user=User(name, HASH, attributes={"n": 1}, backend="postgres"),
                )
            )
            for name in others
        ]
        failures: list[BaseException] = []

        def by_hand(name: str) -> None:
            try:
                conninfo = plain_sql.settings.conninfo()
                with psycopg.connect(conninfo, options="-c lock_timeout=1000") as conn:
                    conn.execute("UPDATE users SET extern = 'x' WHERE username = %s", (name,))
                    conn.execute("SELECT omejdn_pg_changed('user', %s)", (name,))
            except BaseException as error:
                failures.append(error)

        hand = [threading.Thread(target=by_hand, args=(name,)) for name in others]
        for thread in package + hand:
            thread.start()
        for thread in package + hand:
            thread.join(10)
        assert not any(thread.is_alive() for thread in package + hand)
        assert not failures, failures
        assert time.monotonic() - start < 10
        assert holder.is_alive()  # all of that while the first write is still open
        assert waiting_locks(plain_sql) == []
    finally:
        release.set()
        holder.join(10)
    assert user_get(writer, first).extern == "held"  # type: ignore[union-attr]
    writers = plain_sql.value(
        "SELECT count(DISTINCT writer) FROM omejdn_pg_changes WHERE name = 'user'"
    )
    assert writers >= 3


def test_sixteen_writers_never_leave_a_cache_stale_beyond_the_bound(
    open_pooled: Callable[[str], PluginLoader],
) -> None:
    """16 threads rewrite 16 users as fast as they can for 3 s; another loader reads them
    through its cache, whose listener drops one notice in five on the floor. Every read
    returns a value that was current at most ``BOUND`` (+ margin) before it was asked.
    Then, with every user cached, the 16 write once more at the same moment and every
    one of those notices is lost: the chains of counters alone bring the cache up to date
    within the bound."""
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

    threads = [threading.Thread(target=write, args=(name,)) for name in names()]
    for thread in threads:
        thread.start()
    worst = 0.0
    reads = 0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            name = names()[reads % WRITERS]
            asked = time.monotonic()
            found = user_get(reader, name)
            assert found is not None
            n = found.attributes["n"]
            later = committed[name]
            # The value read was outdated once n + 1 committed: how long before we asked?
            if n + 1 < len(later):
                worst = max(worst, asked - later[n + 1])
            reads += 1
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    writes = sum(len(times) - 1 for times in committed.values())
    stats = cache.stats()
    assert writes >= WRITERS * 5, writes
    assert dropped[0] > 0
    assert worst <= BOUND + MARGIN, (worst, stats)
    assert stats["hits"] > 0, stats
    # The lost notices were caught by the chains, not by luck.
    assert stats["gaps"] + stats["flushes"] > 0, stats

    # Every user served from the cache, then one more write each, all notices lost.
    time.sleep(BOUND)
    for name in names():
        # A busy machine may delay a heartbeat past the bound, which flushes: try a while.
        deadline = time.monotonic() + 10
        while ("user", name) not in cache._entries:
            assert time.monotonic() < deadline, f"{name} never cached"
            user_get(reader, name)
            time.sleep(0.01)
    loss[0] = 1.0
    barrier = threading.Barrier(WRITERS)
    final = {name: len(committed[name]) for name in names()}

    def last_write(name: str) -> None:
        barrier.wait(10)
        changed = User(name, HASH, attributes={"n": final[name]}, backend="postgres")
        writer.fire(events.USER_UPDATE, user=changed)

    threads = [threading.Thread(target=last_write, args=(name,)) for name in names()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    done = time.monotonic()
    for name in names():
        while user_get(reader, name).attributes["n"] != final[name]:  # type: ignore[union-attr]
            assert time.monotonic() - done < BOUND + MARGIN, (name, cache.stats())
            time.sleep(0.005)


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
        for _ in range(100):
            user_get(reader, name)
            if cache_of(reader).stats()["hits_by_group"]["user"] and _cached(name):
                return
            time.sleep(0.01)
        raise AssertionError(f"{name} never served from the cache")

    def _cached(name: str) -> bool:
        return ("user", name) in cache_of(reader)._entries

    def eventually_extern(name: str, value: str) -> None:
        deadline = time.monotonic() + BOUND + MARGIN
        while (user_get(reader, name) or User("?")).extern != value:
            assert time.monotonic() < deadline, f"{name} still stale"
            time.sleep(0.005)

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
        eventually_extern("alice", f"v{attempt}")


def test_rows_idle_for_two_hours_are_pruned_and_a_new_row_is_still_followed(
    open_pooled: Callable[[str], PluginLoader], plain_sql: PlainSQL
) -> None:
    """Pruning keeps the counters as many rows as recent writing sessions; a session whose
    row was pruned starts a new one (its values still above the old ones), and a change it
    counts without its notice is still caught by the next poll."""
    reader = open_pooled(f"{{max_staleness: {BOUND}, user: true}}")
    writer = open_pooled("false")
    writer.fire(events.USER_CREATE, user=User("alice", HASH), user_backend="postgres")
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
        time.sleep(BOUND)  # the reader has polled the empty table
        for _ in range(100):
            user_get(reader, "alice")
            if ("user", "alice") in cache_of(reader)._entries:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("alice never cached")
        # The pruned session counts again, and this time its notice is lost.
        cache = cache_of(reader)
        heard = cache.on_notice
        cache.on_notice = lambda payload: None if payload.startswith("user:") else heard(payload)  # type: ignore[method-assign]
        session.execute("UPDATE users SET extern = 'pruned' WHERE username = 'alice'")
        row = session.execute(
            "SELECT counter, prior FROM omejdn_pg_changes WHERE name = 'user' AND writer = %s",
            (pid,),
        ).fetchone()
        assert row is not None
        assert row[0] > before
        assert row[1] is None  # a new row
    deadline = time.monotonic() + BOUND + MARGIN
    while (user_get(reader, "alice") or User("?")).extern != "pruned":
        assert time.monotonic() < deadline, cache_of(reader).stats()
        time.sleep(0.005)
