"""Replicas found from Patroni, and the read cache following the leader, on a real cluster.

``topology: {patroni: [...]}`` instead of a ``replicas:`` list: a member added
with no configuration change serves reads within one refresh, a member stopped
is dropped with no failed read, and after a switchover the old leader serves
reads while the new one takes the writes — read-your-writes holding
throughout (the LSN rule), every acknowledged write on the leader.

The read cache of a second process (``bench.staleness``'s reader) across a
switchover: a write through the new leader is served over there within
``max_staleness``, its listener having moved to the new leader. And (on the
plain standby rig) a listener whose server stays up but turns read-only — a
primary fenced by an HA tool — leaves it, so the bound holds then too.

Marked slow: CI runs it once, on the embedded run.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import staleness
from bench.staleness import Reader, plugin_file
from omejdn_pg import PluginLoader
from omejdn_pg.entities import User
from omejdn_pg.errors import StorageUnavailable
from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import (
    BackendSettings,
    FailoverSettings,
    PasswordSettings,
    PoolSettings,
    TopologySettings,
)
from tests.cluster.patroni import PatroniCluster, PatroniNode, patroni_or_fail
from tests.cluster.rig import Cluster, cluster_or_skip
from tests.cluster.traffic import HostCaller, Traffic
from tests.kits.commands import ok, omejdn_pg
from tests.kits.passwords import OMEJDN_HASH

pytestmark = pytest.mark.slow

REFRESH = 1.0
MARGIN = 1.5
"""Seconds a shared, loaded machine may add to a bound before a test calls it broken."""
STALENESS = 0.5
SECTION = staleness.SECTION  # the section the other process reads


@pytest.fixture(scope="module")
def rig() -> Iterator[PatroniCluster]:
    with patroni_or_fail() as cluster:
        yield cluster


def settings_for(rig: PatroniCluster) -> BackendSettings:
    return BackendSettings(
        connection=rig.connection(
            target_session_attrs="read-write", connect_timeout="2", application_name="topology"
        ),
        passwords=PasswordSettings(bcrypt_rounds=4),
        pool=PoolSettings(size=4, max_overflow=4, timeout=5),
        failover=FailoverSettings(read_wait=datetime.timedelta(seconds=20)),
        topology=TopologySettings(
            tuple(rig.rest_urls), refresh=datetime.timedelta(seconds=REFRESH)
        ),
    )


def database_of(host: Host) -> Database:
    assert host.postgres is not None
    return host.postgres.database


def ports_routed(database: Database) -> set[int]:
    assert database.router is not None
    return {int(r.connection.params["port"]) for r in database.router.replicas}


def served_by(database: Database, node: PatroniNode) -> int:
    assert database.router is not None
    return sum(n for name, n in database.router.served.items() if f":{node.port}/" in name)


def non_leaders(rig: PatroniCluster) -> set[int]:
    leader = rig.leader()
    return {node.port for node in rig.nodes if node is not leader}


def test_a_member_added_serves_reads_within_a_refresh_and_one_stopped_is_dropped(
    rig: PatroniCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.wait_healthy()
    with Host.from_settings(settings_for(rig)) as host:
        database = database_of(host)
        if host.users.find("alice") is None:
            host.users.add(User(username="alice", password=OMEJDN_HASH), "postgres")
        # The replicas are the members Patroni lists as such, none configured.
        assert ports_routed(database) == non_leaders(rig)
        deadline = time.monotonic() + 10
        while sum(database.router.served.values()) == 0 if database.router else True:
            assert host.users.find("alice") is not None
            assert time.monotonic() < deadline, "no read was served by a replica"

        added = rig.add_node()
        listed = rig.wait_member(
            added, lambda m: m is not None and m["state"] in ("running", "streaming")
        )
        while served_by(database, added) == 0:
            assert host.users.find("alice") is not None
            # Loose: on a loaded machine a first connection to the new member can time
            # out, and a replica that failed is skipped for 1 s, doubling. The figure is printed.
            assert time.monotonic() - listed < REFRESH + 15, (
                "the new member serves no read",
                [
                    (r, r.failures, r.down_until - time.monotonic())
                    for r in (database.router.replicas if database.router else ())
                ],
            )
            time.sleep(0.005)
        used = time.monotonic() - listed

        with Traffic(lambda: HostCaller(host), f"drop-{time.monotonic_ns()}") as traffic:
            time.sleep(0.5)
            stopping = time.monotonic()
            remover = threading.Thread(target=rig.remove_node, args=(added,))
            remover.start()
            while added.port in ports_routed(database):
                assert time.monotonic() - stopping < REFRESH + MARGIN + 10, "the member stayed"
                time.sleep(0.01)
            dropped = time.monotonic() - stopping
            remover.join(60)
            stopped = time.monotonic() - stopping
            time.sleep(0.3)
        failed = [c.error for c in traffic.reads if c.error is not None]
        assert failed == []
        assert traffic.stale == []
        assert ports_routed(database) == non_leaders(rig)
    with capsys.disabled():
        print(
            f"\npatroni topology: a new member served its first read {1000 * used:.0f} ms after "
            f"Patroni listed it running (refresh {REFRESH:g}s); a stopped member was dropped "
            f"{1000 * dropped:.0f} ms after its stop began (the stop took {stopped:.1f}s); "
            f"{len(traffic.reads)} reads meanwhile, "
            "0 failed"
        )


def test_after_a_switchover_the_old_leader_serves_reads_and_no_write_is_lost(
    rig: PatroniCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.wait_healthy()
    old = rig.leader()
    prefix = f"topology-switchover-{time.monotonic_ns()}"
    with Host.from_settings(settings_for(rig)) as host:
        database = database_of(host)
        if host.users.find("alice") is None:
            host.users.add(User(username="alice", password=OMEJDN_HASH), "postgres")
        assert old.port not in ports_routed(database)
        with Traffic(lambda: HostCaller(host), prefix) as traffic:
            time.sleep(0.5)
            rig.switchover()
            new = rig.wait_new_leader(old)
            promoted = time.monotonic()
            # Patroni's view changes; the replicas follow it with no configuration change.
            while ports_routed(database) != non_leaders(rig):
                assert time.monotonic() - promoted < 30, ports_routed(database)
                time.sleep(0.05)
            served_before = served_by(database, old)
            deadline = time.monotonic() + 10
            while served_by(database, old) == served_before:
                assert time.monotonic() < deadline, "the old leader serves no read"
                time.sleep(0.05)
            time.sleep(0.3)
        rig.wait_healthy()
        present = {
            row[0]
            for row in new.query(
                "SELECT username FROM users WHERE username LIKE %s", (prefix + "-%",), "omejdn"
            )
        }
    lost = [name for name in traffic.acknowledged if name not in present]
    assert lost == []
    # Read-your-writes: every read found the last create acknowledged before it.
    assert traffic.stale == []
    assert [c.error for c in traffic.reads if c.error is not None] == []
    assert new.port not in ports_routed(database)
    with capsys.disabled():
        print(
            f"\npatroni topology switchover: {len(traffic.acknowledged)} creates acknowledged, "
            f"0 lost; {len(traffic.reads)} reads, 0 failed, 0 stale; replicas now "
            f"{sorted(ports_routed(database))} (old leader {old.port} among them)"
        )


def write_until_it_works(loader: EventBus, n: int, timeout: float = 30) -> float:
    """CONFIGURATION_STORE until one succeeds (writes fail fast meanwhile); when it returned."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            loader.fire(events.CONFIGURATION_STORE, section=SECTION, data={"n": n})
            return time.monotonic()
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def seen_within(reader: Reader, n: int, committed: float) -> float:
    """Seconds from ``committed`` until the other process served ``n`` (it must not go back)."""
    while True:
        seen, at = reader.expect("seen")[0].split()
        if int(seen) == n:
            return float(at) - committed
        assert int(seen) < n, f"the other process served {seen} after {n}"


def test_a_second_process_cache_serves_nothing_stale_across_a_switchover(
    rig: PatroniCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rig.wait_healthy()
    connection = rig.connection(target_session_attrs="read-write", connect_timeout="2")
    writer_file = plugin_file(tmp_path / "writer.yml", connection, False)
    reader_file = plugin_file(
        tmp_path / "reader.yml", connection, {"config": True, "max_staleness": STALENESS}
    )
    with PluginLoader.from_files([writer_file], base_dir=tmp_path) as writer:
        writer.fire(events.CONFIGURATION_STORE, section=SECTION, data={"n": 0})
        reader = Reader(reader_file)
        try:
            reader.expect("ready")
            delays = [seen_within(reader, 1, write_until_it_works(writer, 1))]
            old = rig.leader()
            switching = threading.Thread(target=rig.switchover)
            switching.start()
            new = rig.wait_new_leader(old)
            # The first write through the new leader, then a few more.
            for n in range(2, 6):
                delays.append(seen_within(reader, n, write_until_it_works(writer, n)))
            switching.join(60)
            # The listener reconnects with a backoff (up to 2 s between attempts), and
            # serves nothing from the cache meanwhile: give it a few attempts.
            listeners, deadline = 0, time.monotonic() + 10
            while listeners < 1 and time.monotonic() < deadline:
                listeners = new.value(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    ("omejdn_pg-cache-listener",),
                )
                time.sleep(0.1)
            stats = reader.stop()
        finally:
            reader.kill()
    assert max(delays) <= STALENESS + MARGIN, delays
    assert listeners >= 1, "no cache listener on the new leader"
    assert stats["connects"] >= 2, stats
    with capsys.disabled():
        print(
            f"\npatroni cache: across a switchover the other process served each new value "
            f"{', '.join(f'{1000 * d:.0f}' for d in delays)} ms after its write returned "
            f"(max_staleness {1000 * STALENESS:.0f} ms); its listener reconnected "
            f"{stats['connects'] - 1} time(s), now on the new leader"
        )


@pytest.fixture
def standby_rig() -> Iterator[Cluster]:
    with cluster_or_skip(standbys=1) as cluster:
        cluster.create_database("omejdn")
        yield cluster


def test_a_cache_listener_leaves_a_primary_that_turned_read_only(
    standby_rig: Cluster, tmp_path: Path
) -> None:
    """An HA tool fences the old primary read-only and promotes the standby; the old
    primary stays up. The listener must not keep hearing it as if it were the primary."""
    primary, standby = standby_rig.nodes
    both = standby_rig.connection("omejdn", primary, standby, target_session_attrs="read-write")
    reader_file = plugin_file(
        tmp_path / "reader.yml", both, {"config": True, "max_staleness": STALENESS}
    )
    writer_file = plugin_file(tmp_path / "writer.yml", standby.settings("omejdn"), False)
    with PluginLoader.from_files(
        [plugin_file(tmp_path / "first.yml", primary.settings("omejdn"), False)],
        base_dir=tmp_path,
    ) as first:
        first.fire(events.CONFIGURATION_STORE, section=SECTION, data={"n": 0})
    standby_rig.wait_replayed()
    reader = Reader(reader_file)
    try:
        reader.expect("ready")
        standby_rig.promote(standby)
        primary.fence()
        with PluginLoader.from_files([writer_file], base_dir=tmp_path) as writer:
            committed = write_until_it_works(writer, 1)
            delay = seen_within(reader, 1, committed)
        reader.stop()
    finally:
        reader.kill()
    assert delay <= STALENESS + MARGIN, delay


def test_check_shows_patronis_members_next_to_what_the_package_uses(
    rig: PatroniCluster, tmp_path: Path
) -> None:
    rig.wait_healthy()
    leader = rig.leader()
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in rig.nodes)
    url = f"postgresql://postgres@{hosts}/omejdn?target_session_attrs=read-write"
    plugins = tmp_path / "plugins.yml"
    plugins.write_text(
        "plugins:\n  postgres_backend:\n    topology:\n"
        f"      patroni: [{', '.join(rig.rest_urls)}]\n"
    )
    env = {"OMEJDN_PLUGINS": str(plugins)}
    report = json.loads(ok(omejdn_pg("--url", url, "check", "--json", env=env)).stdout)
    members = {m["name"]: m for m in report["patroni"]["members"]}
    assert set(members) >= {node.name for node in rig.nodes}
    assert members[leader.name]["role"] == "leader"
    assert report["patroni"]["in_use"] == leader.address
    assert all(isinstance(members[n.name]["timeline"], int) for n in rig.nodes)
    # Every member but the leader is probed as a standby, as Patroni listed it.
    probed = {(n["node"], n["role"]) for n in report["nodes"] if n["source"] == "patroni"}
    assert probed == {(n.address, "standby") for n in rig.nodes if n is not leader}
    human = ok(omejdn_pg("--url", url, "check", env=env)).stdout
    assert "PACKAGE USES" in human
    line = next(row for row in human.splitlines() if row.startswith(leader.name + " "))
    assert "leader" in line
    assert "writes" in line
    # The probe is unchanged: a writable primary answers through the connection.
    ready = ok(omejdn_pg("--url", url, "check", "--ready"))
    assert ready.stdout.startswith(f"ready: writable primary {leader.address}")
    # Patroni unreachable: said, and the servers are still reported.
    plugins.write_text(
        "plugins:\n  postgres_backend:\n    topology:\n      patroni: [http://127.0.0.1:1]\n"
    )
    down = json.loads(ok(omejdn_pg("--url", url, "check", "--json", env=env)).stdout)
    assert "no Patroni REST endpoint answered" in down["patroni"]["error"]
    assert any(n["in_use"] for n in down["nodes"])
