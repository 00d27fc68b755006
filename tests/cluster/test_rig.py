"""The replication rig itself, and what ``topology`` reads from the servers.

A real primary and a real streaming standby (``tests/cluster/rig.py``): a row
written on one is replayed on the other, the standby refuses writes, its apply
can be delayed, and a promotion makes it a primary. ``topology.inspect`` must
say the same as ``pg_is_in_recovery()`` on each node, and ``readiness`` is
true only while a writable primary answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from omejdn_pg.postgres import topology
from omejdn_pg.settings.connection import ConnectionSettings
from tests.cluster.rig import Cluster, cluster_or_skip
from tests.kits.commands import ok, omejdn_pg


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_or_skip(standbys=1) as rig:
        rig.create_database("omejdn")
        yield rig


def test_the_standby_replays_the_primary_and_refuses_writes(cluster: Cluster) -> None:
    primary, standby = cluster.nodes
    assert not primary.in_recovery()
    assert standby.in_recovery()
    primary.query("CREATE TABLE replayed (n int)", dbname="omejdn")
    primary.query("INSERT INTO replayed VALUES (1), (2)", dbname="omejdn")
    cluster.wait_replayed()
    assert standby.value("SELECT sum(n) FROM replayed", dbname="omejdn") == 3
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        standby.query("INSERT INTO replayed VALUES (3)", dbname="omejdn")
    # Streaming, under the name the rig gave it.
    assert primary.query("SELECT application_name, state FROM pg_stat_replication") == [
        (standby.name, "streaming")
    ]
    # The schema came with the base backup and the replayed migration.
    assert standby.value("SELECT to_regclass('users') IS NOT NULL", dbname="omejdn")


def test_apply_delay_holds_a_commit_back_on_the_standby(cluster: Cluster) -> None:
    primary, standby = cluster.nodes
    primary.query("CREATE TABLE IF NOT EXISTS delayed (n int)", dbname="omejdn")
    cluster.wait_replayed()
    cluster.set_apply_delay(standby, "700ms")
    try:
        primary.query("INSERT INTO delayed VALUES (1)", dbname="omejdn")
        written = time.monotonic()
        assert standby.value("SELECT count(*) FROM delayed", dbname="omejdn") == 0
        cluster.wait_replayed(standby)
        assert time.monotonic() - written >= 0.6
        assert standby.value("SELECT count(*) FROM delayed", dbname="omejdn") == 1
    finally:
        cluster.set_apply_delay(standby, "0")


def test_topology_names_each_role_the_lag_and_the_node_in_use(cluster: Cluster) -> None:
    primary, standby = cluster.nodes
    # The standby first: target_session_attrs decides where connections land.
    connection = cluster.connection("omejdn", standby, primary, target_session_attrs="read-write")
    cluster.wait_replayed()
    found = topology.inspect(connection)
    roles = {node.node: node.role for node in found.nodes}
    assert roles == {
        f"127.0.0.1:{standby.port}": topology.STANDBY,
        f"127.0.0.1:{primary.port}": topology.PRIMARY,
    }
    assert found.in_use is not None
    assert found.in_use.node == f"127.0.0.1:{primary.port}"
    by_role = {node.role: node for node in found.nodes}
    assert by_role[topology.PRIMARY].writable
    assert not by_role[topology.STANDBY].writable
    lag = by_role[topology.STANDBY].lag_seconds
    assert lag is not None
    assert lag < 5
    assert by_role[topology.STANDBY].lag_bytes is not None
    assert found.as_dict()["in_use"] == f"127.0.0.1:{primary.port}"
    rows = list(topology.describe(found))
    assert [row[2] for row in rows] == ["standby", "primary"]
    # A replica listed on its own is probed too; a dead node is reported, not raised.
    dead = ConnectionSettings({"host": "127.0.0.1", "port": "1", "dbname": "omejdn"})
    with_replica = topology.inspect(connection, [standby.settings("omejdn"), dead])
    assert [(n.source, n.role, n.reachable) for n in with_replica.nodes][2:] == [
        ("replica", topology.STANDBY, True),
        ("replica", None, False),
    ]


def test_readiness_needs_a_writable_primary(cluster: Cluster) -> None:
    primary, standby = cluster.nodes
    both = cluster.connection("omejdn", standby, primary)
    ready = topology.readiness(both)
    assert ready.ready
    assert ready.node == f"127.0.0.1:{primary.port}"
    only_standby = topology.readiness(standby.settings("omejdn"))
    assert not only_standby.ready
    assert "no writable primary" in only_standby.reason
    # A primary fenced read-only is not ready either.
    primary.fence()
    try:
        fenced = topology.readiness(primary.settings("omejdn"))
        assert not fenced.ready
    finally:
        primary.fence(read_only=False)
    assert topology.readiness(primary.settings("omejdn")).ready


def test_the_check_command_reports_nodes_and_probes_readiness(
    cluster: Cluster, tmp_path: Path
) -> None:
    primary, standby = cluster.nodes
    both = (
        f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/omejdn"
        "?target_session_attrs=read-write"
    )
    # The replica comes from the plugin file, the connection from --url.
    plugins = tmp_path / "plugins.yml"
    plugins.write_text(
        "plugins:\n  postgres_backend:\n"
        f"    replicas: [{{host: 127.0.0.1, port: {standby.port}}}]\n"
    )
    env = {"OMEJDN_PLUGINS": str(plugins)}
    report = json.loads(ok(omejdn_pg("--url", both, "check", "--json", env=env)).stdout)
    assert [(n["node"], n["source"], n["role"], n["in_use"]) for n in report["nodes"]] == [
        (f"127.0.0.1:{standby.port}", "connection", "standby", False),
        (f"127.0.0.1:{primary.port}", "connection", "primary", True),
        (f"127.0.0.1:{standby.port}", "replica", "standby", False),
    ]
    human = ok(omejdn_pg("--url", both, "check", env=env)).stdout
    assert "REPLAY LAG" in human
    assert "standby" in human
    ready = ok(omejdn_pg("--url", both, "check", "--ready"))
    assert ready.stdout.startswith(f"ready: writable primary 127.0.0.1:{primary.port}")
    only_standby = f"postgresql://postgres@127.0.0.1:{standby.port}/omejdn"
    refused = omejdn_pg("--url", only_standby, "check", "--ready")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: not ready: no writable primary answered")
    probe = json.loads(omejdn_pg("--url", only_standby, "check", "--ready", "--json").stdout)
    assert probe["ready"] is False


def test_split_hosts_follows_libpq_lists() -> None:
    both = ConnectionSettings(
        {"host": "a,b", "port": "1,2", "dbname": "x", "target_session_attrs": "read-write"}
    )
    assert [n.params for n in topology.split_hosts(both)] == [
        {"host": "a", "port": "1", "dbname": "x"},
        {"host": "b", "port": "2", "dbname": "x"},
    ]
    one_port = ConnectionSettings({"host": "a,b", "port": "5433"})
    assert [topology.node_name(n) for n in topology.split_hosts(one_port)] == ["a:5433", "b:5433"]
    assert [topology.node_name(n) for n in topology.split_hosts(ConnectionSettings())] == [
        "localhost:5432"
    ]
    assert topology.parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert topology.format_lsn(topology.parse_lsn("16/B374D848") or 0) == "16/B374D848"


def test_promotion_and_a_rebuilt_old_primary(cluster: Cluster) -> None:
    # Last in this module: it changes who is primary.
    primary, standby = cluster.nodes
    primary.query("CREATE TABLE IF NOT EXISTS before_failover (n int)", dbname="omejdn")
    primary.query("INSERT INTO before_failover VALUES (7)", dbname="omejdn")
    cluster.wait_replayed()
    cluster.stop(primary)
    assert not topology.readiness(cluster.connection("omejdn", primary, standby)).ready
    cluster.promote(standby)
    assert not standby.in_recovery()
    assert cluster.primary is standby
    standby.query("INSERT INTO before_failover VALUES (8)", dbname="omejdn")
    cluster.rebuild_as_standby(primary, standby)
    cluster.wait_replayed()
    assert primary.in_recovery()
    assert primary.value("SELECT sum(n) FROM before_failover", dbname="omejdn") == 15
    found = topology.inspect(cluster.connection("omejdn", primary, standby))
    assert [n.role for n in found.nodes] == [topology.STANDBY, topology.PRIMARY]
