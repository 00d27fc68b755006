"""Real multi-server rigs for the tests and the bench: streaming replication and PgBouncer.

A :class:`Cluster` is a primary and any number of streaming standbys started
from the embedded server's own binaries (the ``pgserver`` wheel ships
``initdb``, ``pg_ctl`` and ``pg_basebackup``): ``pg_basebackup -R`` clones the
primary, each node listens on its own free TCP port on 127.0.0.1, and the
whole thing lives in one temporary folder deleted by :meth:`Cluster.close`.
Nodes can be stopped, started, promoted, re-pointed at a new primary, rebuilt
as a standby of it, and a standby's apply can be delayed
(``recovery_min_apply_delay``) to make replication lag on demand.

A :class:`PgBouncer` is Debian's ``pgbouncer`` started with an ini file of its
own in front of any server, in transaction pooling mode by default.

Nothing here is simulated: failover, lag and pooling are the servers' own. The
only reason to skip is that the binaries are missing (:class:`RigUnavailable`
says which); :func:`cluster_or_skip` and :func:`pgbouncer_or_skip` turn that
into a pytest skip with the reason, and the bench can catch it itself.

As root, PostgreSQL refuses to run, so (like ``pgserver``) every server
process runs as the ``pgserver`` system user, and the folders live under
``/tmp`` where that user can reach them — never under pytest's ``tmp_path``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from omejdn_pg.settings.connection import ConnectionSettings

SERVICE_USER = "pgserver"
"""The system user ``pgserver`` runs PostgreSQL as when the tests run as root."""

# Settings every node starts with (the standbys get them through the base backup).
# A throwaway cluster: durability buys nothing, speed and prompt reconnects do.
NODE_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_keep_size": "'256MB'",
    "wal_receiver_status_interval": "'1s'",
    "wal_retrieve_retry_interval": "'200ms'",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "60",
    "log_line_prefix": "'%m [%p] %a '",
}
HBA = """\
local all all trust
local replication all trust
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
"""


class RigUnavailable(RuntimeError):
    """The binaries a rig needs are missing; the message says which and how to get them."""


def postgres_bin() -> Path:
    """The embedded server's ``bin`` folder, or RigUnavailable naming what is missing."""
    try:
        import pgserver
    except ImportError as error:
        raise RigUnavailable(
            "the pgserver wheel is not installed (pip install -e '.[dev]')"
        ) from error
    folder = Path(pgserver.__file__).parent / "pginstall" / "bin"
    missing = [
        n for n in ("initdb", "pg_ctl", "pg_basebackup", "postgres") if not (folder / n).exists()
    ]
    if missing:
        raise RigUnavailable(f"{folder} lacks {', '.join(missing)}")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _service_user() -> str | None:
    """Who runs the servers: ourselves, or ``pgserver`` when we are root."""
    if os.geteuid() != 0:
        return None
    from pgserver.utils import ensure_user_exists

    ensure_user_exists(SERVICE_USER)
    return SERVICE_USER


def _prepare_binaries(folder: Path) -> None:
    """Let the service user run the binaries (pgserver does the same before its first start)."""
    import stat

    from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    ensure_prefix_permissions(folder)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(folder, readable | stat.S_IXGRP | stat.S_IXOTH)
    ensure_folder_permissions(folder.parent / "lib", readable)


def own(path: Path, user: str | None) -> None:
    if user is not None:
        shutil.chown(path, user, user)


def _own_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    own(path, user)
    for folder, folders, files in os.walk(path):
        for name in folders + files:
            shutil.chown(os.path.join(folder, name), user, user)


_TEMPLATES: dict[Path, Path] = {}


def _initdb_template(bin_folder: Path, user: str | None) -> Path:
    """A fresh ``initdb`` data folder, made once per process and copied for each cluster."""
    if bin_folder not in _TEMPLATES:
        base = Path(tempfile.mkdtemp(prefix="omejdn-pg-initdb-"))
        atexit.register(shutil.rmtree, base, ignore_errors=True)
        own(base, user)
        data = base / "data"
        run(
            [
                str(bin_folder / "initdb"),
                "-D",
                str(data),
                "--auth=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
                "--no-sync",
            ],
            user,
        )
        _TEMPLATES[bin_folder] = data
    return _TEMPLATES[bin_folder]


def run(command: Sequence[str], user: str | None, timeout: float = 60) -> str:
    """Run a server binary; its output goes to files, never to pipes a daemon could inherit."""
    with tempfile.TemporaryFile("w+") as out:
        try:
            subprocess.run(
                list(command),
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                user=user,
                timeout=timeout,
                cwd="/",
            )
        except subprocess.CalledProcessError as error:
            out.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed: {out.read().strip()}") from error
        out.seek(0)
        return out.read()


class Server:
    """What the tests ask of any server of a rig: its connection settings, and plain SQL
    on it (autocommit, a connection per call)."""

    port: int
    connect_timeout = 5

    def settings(self, dbname: str = "postgres", **params: str) -> ConnectionSettings:
        """Connection settings of this server alone (TCP on 127.0.0.1)."""
        return ConnectionSettings(
            {"host": "127.0.0.1", "port": str(self.port), "user": "postgres", "dbname": dbname}
            | params
        )

    def connect(
        self, dbname: str = "postgres", timeout: int | None = None
    ) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self.settings(dbname).conninfo(),
            autocommit=True,
            connect_timeout=timeout or self.connect_timeout,
        )

    def query(self, statement: str, params: Any = None, dbname: str = "postgres") -> list[Any]:
        with self.connect(dbname) as conn:
            cursor = conn.execute(statement.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def value(self, statement: str, params: Any = None, dbname: str = "postgres") -> Any:
        rows = self.query(statement, params, dbname)
        assert len(rows) == 1, rows
        return rows[0][0]


@dataclass
class Node(Server):
    """One PostgreSQL server of a cluster."""

    name: str
    data: Path
    port: int
    cluster: Cluster = field(repr=False)
    running: bool = False

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    @property
    def sockets(self) -> Path:
        """Its Unix socket folder: outside the data folder, or a base backup would copy
        the socket's lock file into the clone."""
        return self.data.parent / f"{self.name}.sockets"

    def in_recovery(self) -> bool:
        return bool(self.value("SELECT pg_is_in_recovery()"))

    def fence(self, read_only: bool = True, timeout: float = 30) -> None:
        """Make this node refuse writes (``default_transaction_read_only``), as HA tools fence
        an old primary, or take it back; returns once every backend takes it on its next command.

        ``pg_reload_conf()`` only signals the postmaster, which rereads the file and
        signals the backends later: a write sent at once may still run on a pooled
        connection. The postmaster signals every backend before it forks the next
        one, so a backend started after the reload (its configuration loaded before
        it started) that reports the new value proves every older backend has the
        signal pending, and a backend handles a pending reload before running the
        next command it reads.
        """
        if read_only:
            self.query("ALTER SYSTEM SET default_transaction_read_only = on")
        else:
            self.query("ALTER SYSTEM RESET default_transaction_read_only")
        self.query("SELECT pg_reload_conf()")
        wanted = "on" if read_only else "off"
        deadline = time.monotonic() + timeout
        while True:
            setting, after_reload = self.query(
                "SELECT current_setting('transaction_read_only'), pg_conf_load_time() < "
                "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())"
            )[0]
            if setting == wanted and after_reload:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not reload default_transaction_read_only")
            time.sleep(0.01)

    def start(self) -> None:
        self.cluster.start(self)

    def stop(self, mode: str = "fast") -> None:
        self.cluster.stop(self, mode)


class Cluster:
    """A primary and its streaming standbys on 127.0.0.1, each on its own port.

    Use it as a context manager (or call :meth:`close`): every node is stopped
    and the folder deleted at the end, whatever happened in between.
    """

    def __init__(self, base: Path | None = None) -> None:
        self.bin = postgres_bin()
        self.user = _service_user()
        if self.user is not None:
            _prepare_binaries(self.bin)
        self.base = base or Path(tempfile.mkdtemp(prefix="omejdn-pg-cluster-"))
        own(self.base, self.user)
        self.nodes: list[Node] = []

    @classmethod
    def create(cls, standbys: int = 1) -> Cluster:
        """A running primary (``node0``) with ``standbys`` streaming standbys."""
        cluster = cls()
        try:
            primary = cluster.init_primary()
            for _ in range(standbys):
                cluster.add_standby(primary)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cluster({', '.join(f'{n.name}:{n.port}' for n in self.nodes)})"

    # --- nodes ---------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        return str(self.bin / name)

    def _new_node(self) -> Node:
        name = f"node{len(self.nodes)}"
        node = Node(name=name, data=self.base / name, port=free_port(), cluster=self)
        self.nodes.append(node)
        return node

    def init_primary(self) -> Node:
        node = self._new_node()
        # initdb takes seconds; a copy of one made earlier in this process, milliseconds.
        shutil.copytree(_initdb_template(self.bin, self.user), node.data, symlinks=True)
        _own_tree(node.data, self.user)
        with (node.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# omejdn-pg test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in NODE_SETTINGS.items())
        (node.data / "pg_hba.conf").write_text(HBA)
        self.start(node)
        return node

    def add_standby(self, of: Node | None = None, *, apply_delay: str | None = None) -> Node:
        """A new standby streaming from ``of`` (default: the current primary)."""
        node = self._new_node()
        self._base_backup(node, of or self.primary)
        if apply_delay is not None:
            self._append_auto_conf(node, f"recovery_min_apply_delay = '{apply_delay}'")
        self.start(node)
        return node

    def _base_backup(self, node: Node, source: Node) -> None:
        run(
            [
                self._tool("pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(source.port),
                "-U",
                "postgres",
                "-D",
                str(node.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
            self.user,
        )
        # Name the standby in primary_conninfo so pg_stat_replication says who is who.
        self._append_auto_conf(node, f"primary_conninfo = '{self._conninfo(source, node)}'")

    @staticmethod
    def _conninfo(source: Node, standby: Node) -> str:
        return f"host=127.0.0.1 port={source.port} user=postgres application_name={standby.name}"

    def _append_auto_conf(self, node: Node, line: str) -> None:
        auto = node.data / "postgresql.auto.conf"
        with auto.open("a") as conf:
            conf.write(line + "\n")
        own(auto, self.user)

    def start(self, node: Node) -> None:
        if node.running:
            return
        node.sockets.mkdir(exist_ok=True)
        own(node.sockets, self.user)
        run(
            [
                self._tool("pg_ctl"),
                "-D",
                str(node.data),
                "-l",
                str(node.log),
                "-w",
                "-t",
                "60",
                "-o",
                f"-p {node.port} -h 127.0.0.1 -k {node.sockets}",
                "start",
            ],
            self.user,
            timeout=90,
        )
        node.running = True

    def stop(self, node: Node, mode: str = "fast") -> None:
        """Stop ``node``: ``fast`` (clean shutdown) or ``immediate`` (as if it crashed)."""
        if not node.running:
            return
        run([self._tool("pg_ctl"), "-D", str(node.data), "-m", mode, "-w", "stop"], self.user)
        node.running = False

    def promote(self, node: Node) -> None:
        """Promote a standby; returns once it accepts writes."""
        run([self._tool("pg_ctl"), "-D", str(node.data), "-w", "promote"], self.user)

    def follow(self, standby: Node, primary: Node) -> None:
        """Re-point a running standby at ``primary`` (after a promotion); no restart needed."""
        standby.query(f"ALTER SYSTEM SET primary_conninfo = '{self._conninfo(primary, standby)}'")
        standby.query("SELECT pg_reload_conf()")

    def rebuild_as_standby(self, node: Node, of: Node) -> None:
        """Throw ``node``'s data away and clone it again from ``of`` (old primary rejoins)."""
        self.stop(node, "immediate")
        shutil.rmtree(node.data)
        self._base_backup(node, of)
        self.start(node)

    def set_apply_delay(self, standby: Node, delay: str) -> None:
        """``recovery_min_apply_delay`` of a running standby (``'0'`` turns it off)."""
        standby.query(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
        standby.query("SELECT pg_reload_conf()")

    # --- roles and replication -------------------------------------------------

    @property
    def primary(self) -> Node:
        """The running node that is not in recovery."""
        for node in self.nodes:
            if node.running and not node.in_recovery():
                return node
        raise RuntimeError(f"{self!r} has no running primary")

    @property
    def standbys(self) -> list[Node]:
        return [node for node in self.nodes if node.running and node.in_recovery()]

    def wait_replayed(self, standby: Node | None = None, timeout: float = 30) -> None:
        """Until ``standby`` (default: every standby) has replayed the primary's written WAL.

        The write position, not the insert position: at a page boundary the
        insert position points past the next page's header, which no replayed
        record ends at until more WAL comes (the cluster's commits are
        synchronous, so everything committed is written).
        """
        target = self.primary.value("SELECT pg_current_wal_lsn()")
        deadline = time.monotonic() + timeout
        for node in [standby] if standby is not None else self.standbys:
            while not node.value("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(target),)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{node.name} did not replay up to {target}")
                time.sleep(0.02)

    def connection(self, dbname: str, *nodes: Node, **params: str) -> ConnectionSettings:
        """A libpq multi-host connection over ``nodes`` (default: all), in that order."""
        chosen = nodes or tuple(self.nodes)
        return ConnectionSettings(
            {
                "host": ",".join("127.0.0.1" for _ in chosen),
                "port": ",".join(str(n.port) for n in chosen),
                "user": "postgres",
                "dbname": dbname,
            }
            | params
        )

    def create_database(self, name: str = "omejdn", *, migrate: bool = True) -> None:
        """A database on the primary (at the head schema), replayed by every standby."""
        from psycopg import sql

        with self.primary.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if migrate:
            from omejdn_pg.postgres import migrate as migrations

            migrations.upgrade(self.primary.settings(name))
        self.wait_replayed()

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                self.stop(node, "immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def cluster_or_skip(standbys: int = 1) -> Iterator[Cluster]:
    """A running cluster for a fixture; a pytest skip with the reason if binaries are missing."""
    import pytest

    try:
        cluster = Cluster.create(standbys)
    except RigUnavailable as error:
        pytest.skip(f"no replication rig: {error}")
    with cluster:
        yield cluster


# --- PgBouncer ------------------------------------------------------------------------

PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> Path:
    """Debian's ``pgbouncer``, or RigUnavailable saying how to install it."""
    found = shutil.which("pgbouncer") or next(
        (p for p in PGBOUNCER_PATHS if Path(p).exists()), None
    )
    if found is None:
        raise RigUnavailable(
            "pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does it)"
        )
    return Path(found)


class PgBouncer:
    """Debian's PgBouncer in front of ``server``, started with an ini file of its own.

    ``pool_mode`` is ``transaction`` unless told otherwise; ``server_round_robin``
    makes consecutive transactions of one client land on different server
    connections, so anything that needs a session (a prepared statement, a
    ``SET``, ``LISTEN``) fails here at once instead of by luck later.
    """

    def __init__(
        self,
        server: ConnectionSettings,
        *,
        pool_mode: str = "transaction",
        pool_size: int = 2,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.binary = pgbouncer_binary()
        self.user = _service_user()
        self.folder = Path(tempfile.mkdtemp(prefix="omejdn-pg-pgbouncer-"))
        own(self.folder, self.user)
        self.port = free_port()
        host = server.params.get("host", "127.0.0.1")
        port = server.params.get("port", "5432")
        user = server.params.get("user", "postgres")
        # PgBouncer logs in to the server with the password it has here.
        password = (server.password or "").replace('"', '""')
        (self.folder / "userlist.txt").write_text(f'"{user}" "{password}"\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.folder / "userlist.txt"),
            "pool_mode": pool_mode,
            "default_pool_size": str(pool_size),
            "max_client_conn": "200",
            "server_round_robin": "1",
            "admin_users": user,
            "logfile": str(self.folder / "pgbouncer.log"),
            "pidfile": str(self.folder / "pgbouncer.pid"),
        } | (extra or {})
        (self.folder / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n"
            "[pgbouncer]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        _own_tree(self.folder, self.user)
        self.user_name = user
        self.process = subprocess.Popen(
            [str(self.binary), str(self.folder / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
            cwd="/",
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start: {self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pgbouncer did not listen: {self.log_text()}") from None
                time.sleep(0.05)

    def log_text(self) -> str:
        log = self.folder / "pgbouncer.log"
        return log.read_text() if log.exists() else "(no log)"

    def settings(self, dbname: str, **params: str) -> ConnectionSettings:
        """Connection settings through the pooler to ``dbname`` on the server."""
        return ConnectionSettings(
            {"host": "127.0.0.1", "port": str(self.port), "user": self.user_name, "dbname": dbname}
            | params
        )

    def admin(self, command: str) -> list[Any]:
        """A command on PgBouncer's admin console (``SHOW POOLS``, ``SHOW VERSION``...)."""
        with psycopg.connect(
            self.settings("pgbouncer").conninfo(), autocommit=True, prepare_threshold=None
        ) as conn:
            cursor = conn.execute(command.encode())
            return cursor.fetchall() if cursor.description else []

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer_or_skip(server: ConnectionSettings, **options: Any) -> Iterator[PgBouncer]:
    """A running PgBouncer for a fixture; a pytest skip with the reason if it is not installed."""
    import pytest

    try:
        bouncer = PgBouncer(server, **options)
    except RigUnavailable as error:
        pytest.skip(f"no PgBouncer: {error}")
    with bouncer:
        yield bouncer


# --- measuring, for the reported (never asserted) latency rows ------------------------


def compare_latency(
    calls: dict[str, Any], *, rounds: int = 20, per_round: int = 100, warmup: int = 50
) -> dict[str, tuple[float, float]]:
    """Median and 95th percentile (seconds) of each labelled call, measured interleaved.

    Rounds alternate between the calls, so a machine that gets busier halfway
    through slows every label alike instead of whichever ran last.
    """
    import statistics

    samples: dict[str, list[float]] = {label: [] for label in calls}
    for call in calls.values():
        for _ in range(warmup):
            call()
    for _ in range(rounds):
        for label, call in calls.items():
            for _ in range(per_round):
                started = time.perf_counter()
                call()
                samples[label].append(time.perf_counter() - started)
    result = {}
    for label, values in samples.items():
        values.sort()
        result[label] = (statistics.median(values), values[int(0.95 * (len(values) - 1))])
    return result


def latency_line(title: str, measured: dict[str, tuple[float, float]], baseline: str) -> str:
    """``title: label median/p95 (ratio to baseline)`` for each label, in microseconds."""
    base = measured[baseline][0]
    parts = [
        f"{label} median {median * 1e6:.0f} us p95 {p95 * 1e6:.0f} us (x{median / base:.2f})"
        for label, (median, p95) in measured.items()
    ]
    return f"{title}: " + "; ".join(parts)
