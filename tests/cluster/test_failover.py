"""Failover with the host running throughout: reads wait it out, writes fail fast, then heal.

Real servers (``tests/cluster/rig.py``): a primary and a streaming standby, the
plugin connected to both through libpq's multi-host list with
``target_session_attrs=read-write``. The primary is stopped, the standby
promoted — the host is never restarted. Then the Keycloak failure (#24493):
an old primary that stays up but read-only, with the pool full of
connections to it; none of them may be used again.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy import text

from omejdn_pg.entities import User
from omejdn_pg.errors import StorageUnavailable
from omejdn_pg.postgres import topology
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import (
    BackendSettings,
    FailoverSettings,
    PasswordSettings,
    PoolSettings,
)
from omejdn_pg.settings.connection import ConnectionSettings
from tests.cluster.rig import Cluster, Node, cluster_or_skip

APP = "omejdn-failover-test"
HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A primary and a standby of this test's own: failing over uses them up."""
    with cluster_or_skip(standbys=1) as rig:
        rig.create_database("omejdn")
        yield rig


def settings_for(cluster: Cluster, read_wait: float = 20.0) -> BackendSettings:
    primary, standby = cluster.nodes
    connection = cluster.connection(
        "omejdn",
        primary,
        standby,
        target_session_attrs="read-write",
        connect_timeout="2",
        application_name=APP,
    )
    return BackendSettings(
        connection=connection,
        passwords=PasswordSettings(bcrypt_rounds=4),
        pool=PoolSettings(size=5, max_overflow=5, timeout=5),
        failover=FailoverSettings(read_wait=datetime.timedelta(seconds=read_wait)),
    )


def database_of(host: Host) -> Database:
    assert host.postgres is not None
    return host.postgres.database


def pooled_connections(database: Database, count: int) -> list[tuple[int, bool, str]]:
    """Check out ``count`` primary connections at once: each one's port, recovery, read-only."""
    with ExitStack() as stack:
        connections = [stack.enter_context(database.engine.connect()) for _ in range(count)]
        found = []
        for conn in connections:
            row = conn.execute(
                text(
                    "SELECT inet_server_port(), pg_is_in_recovery(), "
                    "current_setting('transaction_read_only')"
                )
            ).one()
            found.append((row[0], row[1], row[2]))
            conn.rollback()
        return found


def ours_on(node: Node) -> int:
    """Connections of the host under test open on ``node``."""
    count: int = node.value(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (APP,)
    )
    return count


class Reader(threading.Thread):
    """Reads through the host in a loop, recording each read's start, end and failure."""

    def __init__(self, host: Host) -> None:
        super().__init__(daemon=True)
        self.host = host
        self.stop = threading.Event()
        self.reads: list[tuple[float, float, BaseException | None]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            error: BaseException | None = None
            try:
                assert self.host.config.read("omejdn") is not None
                assert self.host.users.find("alice") is not None
            except BaseException as failure:
                error = failure
            self.reads.append((started, time.monotonic(), error))
            time.sleep(0.005)


def write_until_it_works(host: Host, n: int, timeout: float = 20) -> tuple[float, list[float]]:
    """Write until a write succeeds: when it did, and how long each failed one took."""
    failures: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        try:
            host.config.write("omejdn", {"issuer": "https://id.example", "n": n})
            return time.monotonic(), failures
        except StorageUnavailable:
            failures.append(time.monotonic() - started)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.slow
def test_stop_the_primary_promote_the_standby_and_the_running_host_heals(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    primary, standby = cluster.nodes
    settings = settings_for(cluster)
    with Host.from_settings(settings) as host:
        database = database_of(host)
        host.users.add(User(username="alice", password=HASH))
        host.config.write("omejdn", {"issuer": "https://id.example", "n": 0})
        # Several pooled connections, all to the primary, all idle when it goes.
        assert {port for port, _, _ in pooled_connections(database_of(host), 4)} == {primary.port}
        cluster.wait_replayed()
        # A second host-like database that may wait only one second for a read.
        impatient = Database.for_backend(settings_for(cluster, read_wait=1.0))
        assert impatient.read(lambda conn: conn.execute(text("SELECT 1")).scalar_one()) == 1
        reader = Reader(host)
        reader.start()
        time.sleep(0.3)

        stopped = time.monotonic()
        cluster.stop(primary, "immediate")

        # Writes fail fast while no primary answers, and say so.
        outage_writes = []
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                host.config.write("omejdn", {"issuer": "https://id.example", "n": -1})
            outage_writes.append(time.monotonic() - started)
        assert max(outage_writes) < 2.5, outage_writes
        # A read's wait is bounded by its setting: one second here, then it fails.
        try:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                impatient.read(lambda conn: conn.execute(text("SELECT 1")).scalar_one())
            assert 0.9 <= time.monotonic() - started < 4
        finally:
            impatient.dispose()

        time.sleep(max(0.0, 1.5 - (time.monotonic() - stopped)))
        promoted = time.monotonic()
        cluster.promote(standby)
        recovered, failed_after_promotion = write_until_it_works(host, 1)
        time.sleep(0.5)
        reader.stop.set()
        reader.join(30)

        failures = [error for _, _, error in reader.reads if error is not None]
        assert failures == []
        resumed = min(end for start, end, _ in reader.reads if end > promoted)
        longest = max(end - start for start, end, _ in reader.reads)
        after = [r for r in reader.reads if r[0] > promoted + 0.2]
        assert after, "reads did not continue after the promotion"
        assert longest < (promoted - stopped) + 5

        # Every write of the host lands on the new primary; nothing to restart.
        assert host.config.read("omejdn") == {"issuer": "https://id.example", "n": 1}
        assert standby.value("SELECT count(*) FROM users", dbname="omejdn") == 1

        # The old primary comes back as a standby of the new one: the pool holds
        # no connection to it, only to the writable primary.
        cluster.rebuild_as_standby(primary, standby)
        for n in range(2, 5):
            host.config.write("omejdn", {"issuer": "https://id.example", "n": n})
            assert host.users.find("alice") is not None
        pooled = pooled_connections(database, settings.pool.size)
        assert {(port, recovery, read_only) for port, recovery, read_only in pooled} == {
            (standby.port, False, "off")
        }
        assert ours_on(primary) == 0
        found = topology.inspect(settings.connection)
        assert found.in_use is not None
        assert found.in_use.node == f"127.0.0.1:{standby.port}"
        assert topology.readiness(settings.connection).ready
    with capsys.disabled():
        print(
            f"\nfailover: primary stopped, standby promoted {promoted - stopped:.2f}s later; "
            f"reads resumed {1000 * (resumed - promoted):.0f} ms after the promotion "
            f"(longest read {longest:.2f}s, {len(reader.reads)} reads, 0 failed); "
            f"writes failed fast in {1000 * max(outage_writes):.0f} ms at most during the outage "
            f"and succeeded {1000 * (recovered - promoted):.0f} ms after the promotion "
            f"({len(failed_after_promotion)} refused meanwhile)"
        )


def test_a_pool_full_of_connections_to_a_primary_that_turned_read_only_is_discarded(
    cluster: Cluster,
) -> None:
    """Keycloak #24493: the old primary stays up, read-only, and the pool still points at it."""
    primary, standby = cluster.nodes
    settings = settings_for(cluster)
    with Host.from_settings(settings) as host:
        database = database_of(host)
        host.users.add(User(username="alice", password=HASH))
        host.config.write("omejdn", {"n": 0})
        assert {port for port, _, _ in pooled_connections(database_of(host), 4)} == {primary.port}
        assert ours_on(primary) >= 4
        cluster.wait_replayed()

        # Fail over without stopping the old primary: promote the standby, fence the
        # old primary read-only (as HA tools do); its connections stay open.
        cluster.promote(standby)
        primary.fence()
        assert ours_on(primary) >= 4

        # A read on a pooled connection to the old primary still works; that
        # connection comes back knowing the node is read-only, and from then on no
        # connection made before is handed out again.
        assert host.users.find("alice") is not None
        pooled = pooled_connections(database, settings.pool.size)
        assert {(port, recovery, read_only) for port, recovery, read_only in pooled} == {
            (standby.port, False, "off")
        }
        assert ours_on(primary) == 0
        assert database.read_only_guard.discarded >= 1

        # Writes go to the new primary.
        host.config.write("omejdn", {"n": 1})
        assert standby.value("SELECT count(*) FROM configuration_omejdn", dbname="omejdn") == 1
        assert primary.value("SELECT count(*) FROM configuration_omejdn", dbname="omejdn") == 1
        assert host.config.read("omejdn") == {"n": 1}


def test_a_write_refused_as_read_only_is_retried_on_a_fresh_connection(cluster: Cluster) -> None:
    """SQLSTATE 25006 on a pooled connection: the pool is discarded, the write runs again."""
    primary, standby = cluster.nodes
    settings = settings_for(cluster)
    with Host.from_settings(settings) as host:
        host.config.write("omejdn", {"n": 0})
        assert {port for port, _, _ in pooled_connections(database_of(host), 3)} == {primary.port}
        cluster.wait_replayed()
        cluster.promote(standby)
        primary.fence()
        # No read in between: the first the pool hears of it is the refused write.
        host.config.write("omejdn", {"n": 1})
        assert (
            standby.value(
                "SELECT value::text FROM configuration_omejdn WHERE key = 'n'", dbname="omejdn"
            )
            == "1"
        )
        assert pooled_connections(database_of(host), 3)[0][0] == standby.port


def test_with_no_writable_primary_a_write_says_the_node_is_read_only(cluster: Cluster) -> None:
    standby = cluster.nodes[1]
    # Only the standby, and no target_session_attrs: connections land on it.
    database = Database.connect(standby.settings("omejdn", application_name=APP))
    try:
        assert database.read(lambda conn: conn.execute(text("SELECT 1")).scalar_one()) == 1
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="read-only"):
            database.write(lambda conn: conn.execute(text("CREATE TABLE nope (n int)")))
        assert time.monotonic() - started < 2
    finally:
        database.dispose()
    assert not topology.readiness(standby.settings("omejdn")).ready


def test_an_unreachable_server_that_never_answered_fails_at_once() -> None:
    """Waiting is for a server that went away, not for a misconfigured one."""
    dead = ConnectionSettings({"host": "127.0.0.1", "port": "1", "dbname": "omejdn"})
    database = Database.connect(
        dead, failover=FailoverSettings(read_wait=datetime.timedelta(seconds=30))
    )
    try:
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            database.read(lambda conn: conn.execute(text("SELECT 1")))
        assert time.monotonic() - started < 2
    finally:
        database.dispose()
