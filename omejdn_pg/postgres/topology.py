"""The servers behind one configuration: who is primary, who is a standby, how far behind.

What ``omejdn-pg check`` reports and a readiness probe asks, read from the
servers themselves rather than from any orchestrator's opinion:

* :func:`inspect` connects to each node on its own — every host of a libpq
  multi-host ``connection`` and every configured replica — and reads its role
  (``pg_is_in_recovery()``), whether it takes writes, its WAL position, and for
  a standby its replay lag (bytes behind the primary found, and seconds as
  :data:`STANDBY_STATE` measures them). It also connects once with the
  configuration as written, ``target_session_attrs`` and all, to say which
  node the plugin's connections land on.
* :func:`readiness` is the probe: ready only when a writable primary answers
  through the configured connection. A standby that answers is not ready —
  the Keycloak failure this guards against is a health check saying UP while
  every write fails on a node that went read-only.

Every connection here is a fresh one with a bounded ``connect_timeout``, made
by psycopg alone: a probe must neither wait on nor disturb the plugin's pool.
The trade-off is one connection per node per call, fine for a CLI and a probe
every few seconds, wrong for a hot path (the read router in ``database`` keeps
its own, cheaper observations).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

import psycopg

from omejdn_pg.postgres.patroni import LEADER, ClusterView
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings, inherit_connection

PRIMARY: Final = "primary"
STANDBY: Final = "standby"

STANDBY_STATE: Final = """\
SELECT pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       CASE
         WHEN NOT pg_is_in_recovery() THEN NULL
         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
              AND EXISTS (SELECT FROM pg_stat_wal_receiver WHERE pid IS NOT NULL) THEN 0
         ELSE extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8
       END"""
"""One round trip on a node: in recovery?, replay LSN, replay lag in seconds.

The lag is how old the newest replayed commit is, unless the standby has
replayed everything it received while its WAL receiver is streaming — then it
is 0 (an idle primary sends nothing to replay, so "age of the last commit"
would grow without any lag). NULL when the standby cannot tell (not streaming
and nothing replayed yet): such a standby is treated as too far behind. The
``pid`` of ``pg_stat_wal_receiver`` is visible to every role; its other
columns are not, which is why they are not used. Limit: WAL still in flight
on the network, or a receiver that has not yet noticed a silent network cut
(``wal_receiver_timeout``), is not counted.
"""

_NODE_FACTS: Final = """\
SELECT pg_is_in_recovery(),
       current_setting('transaction_read_only') = 'on',
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       current_setting('server_version')"""


def parse_lsn(text: str | None) -> int | None:
    """``'16/B374D848'`` as a number (None stays None); LSNs compare as numbers."""
    if text is None:
        return None
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class NodeStatus:
    """One server as it answered (or did not) just now."""

    node: str
    """``host:port`` as configured."""
    source: str
    """``connection`` (a host of the plugin's connection), ``replica`` (``replicas:``) or
    ``patroni`` (a member Patroni lists, with ``topology:``)."""
    reachable: bool
    role: str | None = None
    """``primary`` or ``standby``; None when unreachable."""
    writable: bool | None = None
    """A primary with ``transaction_read_only`` off (a fenced primary is not)."""
    wal_lsn: str | None = None
    """A primary's current WAL position, a standby's replay position."""
    lag_bytes: int | None = None
    """A standby's replay position behind the primary's WAL, when a primary answered."""
    lag_seconds: float | None = None
    """A standby's replay lag as :data:`STANDBY_STATE` measures it."""
    in_use: bool = False
    """The node the configured connection lands on (target_session_attrs as written)."""
    server_version: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Topology:
    nodes: tuple[NodeStatus, ...]

    @property
    def in_use(self) -> NodeStatus | None:
        return next((node for node in self.nodes if node.in_use), None)

    @property
    def primaries(self) -> list[NodeStatus]:
        return [node for node in self.nodes if node.role == PRIMARY]

    def as_dict(self) -> dict[str, Any]:
        in_use = self.in_use
        return {
            "nodes": [asdict(node) for node in self.nodes],
            "in_use": in_use.node if in_use is not None else None,
        }


@dataclass(frozen=True)
class Readiness:
    ready: bool
    node: str | None
    """``host:port`` of the writable primary that answered."""
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_hosts(connection: ConnectionSettings) -> list[ConnectionSettings]:
    """One connection per host of a libpq multi-host ``connection``, in libpq's order.

    ``host`` and ``hostaddr`` are comma-separated lists of the same length;
    ``port`` is one port for all or a list of that length (libpq's rules).
    ``target_session_attrs`` and ``load_balance_hosts`` are dropped: each
    result names exactly one server.
    """
    params = dict(connection.params)
    hosts = _items(params.get("host"))
    addresses = _items(params.get("hostaddr"))
    count = max(len(hosts), len(addresses), 1)
    ports = _items(params.get("port"))
    if len(ports) == 1:
        ports = ports * count
    for key in ("target_session_attrs", "load_balance_hosts"):
        params.pop(key, None)
    nodes = []
    for index in range(count):
        single = dict(params)
        for key, values in (("host", hosts), ("hostaddr", addresses), ("port", ports)):
            if index < len(values) and values[index]:
                single[key] = values[index]
            else:
                single.pop(key, None)
        nodes.append(ConnectionSettings(single))
    return nodes


def _items(value: str | None) -> list[str]:
    return [item.strip() for item in value.split(",")] if value else []


def node_name(connection: ConnectionSettings) -> str:
    """``host:port`` of a single-host connection, as libpq would resolve the defaults."""
    params = connection.params
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or '5432'}"


def _connect(connection: ConnectionSettings, timeout: float) -> psycopg.Connection[Any]:
    params: Mapping[str, str] = connection.params
    return psycopg.connect(
        connection.conninfo(),
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=params.get("connect_timeout") or str(max(1, round(timeout))),
    )


def _error(connection: ConnectionSettings, error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return connection.scrub(lines[0] if lines else type(error).__name__)


def inspect(
    connection: ConnectionSettings,
    replicas: Sequence[ConnectionSettings] = (),
    *,
    timeout: float = 3.0,
    replica_source: str = "replica",
) -> Topology:
    """Every node's role, WAL position and lag, and the node the configuration lands on."""
    targets = [(node, "connection") for node in split_hosts(connection)]
    targets += [(node, replica_source) for node in replicas]
    in_use = _landing(connection, timeout)
    raw = [_probe(node, source, timeout) for node, source in targets]
    primary_lsn = next((parse_lsn(s.wal_lsn) for s in raw if s.role == PRIMARY and s.wal_lsn), None)
    nodes = []
    for status in raw:
        lag_bytes = None
        if status.role == STANDBY and primary_lsn is not None and status.wal_lsn is not None:
            lag_bytes = max(0, primary_lsn - (parse_lsn(status.wal_lsn) or 0))
        nodes.append(
            NodeStatus(
                **{
                    **asdict(status),
                    "lag_bytes": lag_bytes,
                    "in_use": status.source == "connection" and status.node == in_use,
                }
            )
        )
    return Topology(tuple(nodes))


def inspect_backend(
    settings: BackendSettings, *, timeout: float = 3.0, cluster: ClusterView | None = None
) -> Topology:
    """:func:`inspect` of the plugin's connection and its replicas: ``replicas:``, or with
    ``topology:`` every member but the leader of Patroni's ``cluster`` view."""
    replicas = settings.replicas.connections(settings.connection)
    if cluster is not None:
        replicas = tuple(
            inherit_connection(settings.connection, ConnectionSettings(m.connection_params()))
            for m in cluster.members
            if m.role != LEADER
        )
        return inspect(settings.connection, replicas, timeout=timeout, replica_source="patroni")
    return inspect(settings.connection, replicas, timeout=timeout)


def _probe(connection: ConnectionSettings, source: str, timeout: float) -> NodeStatus:
    name = node_name(connection)
    try:
        with _connect(connection, timeout) as conn:
            in_recovery, read_only, wal_lsn, version = _one(conn, _NODE_FACTS)
            lag = None
            if in_recovery:
                _, wal_lsn, lag = _one(conn, STANDBY_STATE)
    except psycopg.Error as error:
        return NodeStatus(
            node=name, source=source, reachable=False, error=_error(connection, error)
        )
    return NodeStatus(
        node=name,
        source=source,
        reachable=True,
        role=STANDBY if in_recovery else PRIMARY,
        writable=not in_recovery and not read_only,
        wal_lsn=wal_lsn,
        lag_seconds=lag,
        server_version=version,
    )


def _one(conn: psycopg.Connection[Any], statement: str) -> tuple[Any, ...]:
    row = conn.execute(statement.encode()).fetchone()
    assert row is not None
    return tuple(row)


def _landing(connection: ConnectionSettings, timeout: float) -> str | None:
    """``host:port`` where the configured (multi-host) connection lands; None if nowhere."""
    try:
        with _connect(connection, timeout) as conn:
            return f"{conn.info.host}:{conn.info.port}"
    except psycopg.Error:
        return None


def readiness(connection: ConnectionSettings, *, timeout: float = 3.0) -> Readiness:
    """Ready when a writable primary answers through ``connection``.

    ``target_session_attrs=read-write`` is imposed, so a configuration that
    lists a standby first still finds the primary, and one that finds only
    standbys is not ready; the primary's own ``transaction_read_only`` is
    checked too (a primary fenced read-only after a failover is not ready).
    """
    probe = connection.with_params(target_session_attrs="read-write")
    started = time.monotonic()
    try:
        with _connect(probe, timeout) as conn:
            node = f"{conn.info.host}:{conn.info.port}"
            in_recovery, read_only, _, _ = _one(conn, _NODE_FACTS)
    except psycopg.Error as error:
        return Readiness(
            False,
            None,
            f"no writable primary answered at {connection.describe()}: {_error(connection, error)}",
        )
    if in_recovery or read_only:
        return Readiness(False, node, f"{node} answered but is read-only")
    elapsed = (time.monotonic() - started) * 1000
    return Readiness(True, node, f"writable primary {node} answered in {elapsed:.0f} ms")


def describe(topology: Topology) -> Iterable[tuple[str, ...]]:
    """Table rows for a CLI: node, source, role, lag, in use."""
    for node in topology.nodes:
        if not node.reachable:
            role, lag = "unreachable", node.error or ""
        else:
            role = node.role or "?"
            if node.role == PRIMARY and not node.writable:
                role = "primary (read-only)"
            lag = ""
            if node.role == STANDBY:
                seconds = "?" if node.lag_seconds is None else f"{node.lag_seconds:.3f}s"
                behind = "?" if node.lag_bytes is None else f"{node.lag_bytes} bytes"
                lag = f"{seconds}, {behind}"
        yield (node.node, node.source, role, lag, "yes" if node.in_use else "")
