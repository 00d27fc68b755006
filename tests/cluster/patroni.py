"""A real Patroni cluster for the tests: one etcd and three Patroni nodes on 127.0.0.1.

What production high availability looks like when it is self-hosted: Patroni
runs each PostgreSQL server, holds the leader lease in a consensus store
(etcd here, through its v3 API: the v2 ``etcd:`` section waits for ever unless
etcd runs with ``--enable-v2``) and fails over by itself. Everything is
Debian's: ``apt-get install patroni etcd-server etcd-client`` (``.ci/run``
does it) and the PostgreSQL binaries at ``pg_config --bindir``.

The settings are the ones the README recommends, each for a reason:
``primary_start_timeout: 0`` (with the default 300 s a crashed postmaster is
restarted in place rather than failed over), ``synchronous_mode: true`` (a
commit is acknowledged only once a standby has it, so a crash loses no
acknowledged write), ``ttl: 10, loop_wait: 2, retry_timeout: 4`` (a dead
node's lease expires in at most 10 s).

Every process is started here and stopped here, by its pid and nothing else:
etcd and the Patroni daemons are our children; a postmaster is Patroni's
child but is re-parented to PID 1 when Patroni dies, so it is found through
its ``postmaster.pid`` (and checked to be serving our data folder before it
is signalled). As root the nodes run as the ``postgres`` system user, which
PostgreSQL's packages create; their folders live under ``/tmp``.

A missing binary raises :class:`~tests.cluster.rig.RigUnavailable` saying what to
install; the tests turn that into a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from omejdn_pg.cli.embedded import process_exists
from omejdn_pg.settings.connection import ConnectionSettings
from tests.cluster.rig import RigUnavailable, Server, free_port, own, run

SERVICE_USER = "postgres"
"""Who runs Patroni and PostgreSQL when the tests run as root (Debian's packages make it)."""

DCS = {
    "ttl": 10,
    "loop_wait": 2,
    "retry_timeout": 4,
    "primary_start_timeout": 0,
    "synchronous_mode": True,
    "maximum_lag_on_failover": 16 * 1024 * 1024,
    "postgresql": {
        "use_pg_rewind": True,
        "use_slots": True,
        "parameters": {
            "wal_level": "replica",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "256MB",
            "max_connections": 60,
            "shared_buffers": "32MB",
            # A crash of a process, not of the machine: the OS keeps what was written.
            "fsync": "off",
            "wal_receiver_status_interval": "1s",
            "wal_retrieve_retry_interval": "200ms",
            "log_line_prefix": "%m [%p] %a ",
        },
    },
}
"""Cluster-wide settings (Patroni keeps them in etcd; ``patronictl edit-config`` edits them)."""

HBA = [
    "local all all trust",
    "local replication all trust",
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
]


def postgres_bindir() -> Path:
    """The system PostgreSQL's binaries (``pg_config --bindir``, else the newest installed)."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if (Path(found) / "postgres").exists():
            return Path(found)
    installed = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not installed:
        raise RigUnavailable(
            "no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install -y "
            "postgresql: .ci/run expects the machine's own server, which it tests against too)"
        )
    return installed[-1].parent


def binaries() -> dict[str, str]:
    """Where ``patroni``, ``patronictl`` and ``etcd`` are, or RigUnavailable naming the missing."""
    found = {name: shutil.which(name) for name in ("patroni", "patronictl", "etcd")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise RigUnavailable(
            f"{', '.join(missing)} not installed "
            "(apt-get install -y patroni etcd-server etcd-client; .ci/run does it)"
        )
    return {name: str(path) for name, path in found.items()}


def _service_user() -> str | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise RigUnavailable(
            f"running as root needs the {SERVICE_USER!r} system user (Debian's postgresql "
            "package makes it)"
        ) from None
    return SERVICE_USER


@dataclass
class PatroniNode(Server):
    """One Patroni daemon and the PostgreSQL server it runs."""

    connect_timeout = 3

    name: str
    folder: Path
    port: int
    """PostgreSQL's port."""
    api_port: int
    """Patroni's REST API port."""
    rig: PatroniCluster = field(repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def config(self) -> Path:
        return self.folder / f"{self.name}.yml"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def postmaster_pid(self) -> int | None:
        """The running postmaster of this node's data folder (re-parented or not), or None."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 2 or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        # Ours only if that pid is a postgres serving exactly this folder (pids are reused).
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        if str(self.data).encode() not in command or not process_exists(pid):
            return None
        return pid

    @property
    def patroni_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_postmaster(self) -> int:
        """SIGKILL this node's postmaster (Patroni stays): a crash of PostgreSQL alone."""
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"{self.name} has no running postmaster")
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill(self) -> None:
        """SIGKILL Patroni and then its postmaster: the whole node gone at once."""
        pid = self.postmaster_pid()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if pid is not None and process_exists(pid):
            os.kill(pid, signal.SIGKILL)
        self._wait_postmaster_gone(pid)

    def _wait_postmaster_gone(self, pid: int | None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while pid is not None and process_exists(pid):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}'s postmaster {pid} did not exit")
            time.sleep(0.05)

    def start(self) -> None:
        """Start (or restart) this node's Patroni daemon; it starts PostgreSQL itself."""
        if self.patroni_running:
            return
        self.process = self.rig.spawn(["patroni", str(self.config)], self.log)

    def stop(self, timeout: float = 30) -> None:
        """Stop Patroni cleanly (it shuts PostgreSQL down); kill whatever stays."""
        pid = self.postmaster_pid()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        pid = self.postmaster_pid() or pid
        if pid is not None and process_exists(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_postmaster_gone(pid)

    def rest(self, path: str, timeout: float = 2) -> tuple[int, Any]:
        """``GET`` on this node's REST API: status and decoded JSON (status 0 if it is down)."""
        try:
            with urllib.request.urlopen(self.api + path, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as refused:
            body = refused.read()
            with contextlib.suppress(ValueError):
                return refused.code, json.loads(body or b"null")
            return refused.code, None
        except (OSError, ValueError):
            return 0, None


class PatroniCluster:
    """etcd and ``size`` Patroni nodes in one temporary folder, deleted by :meth:`close`."""

    def __init__(self, size: int = 3, *, synchronous: bool = True) -> None:
        self.tools = binaries()
        self.bindir = postgres_bindir()
        self.user = _service_user()
        self.base = Path(tempfile.mkdtemp(prefix="omejdn-pg-patroni-"))
        own(self.base, self.user)
        self.scope = f"omejdn-test-{uuid.uuid4().hex[:8]}"
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.etcd: subprocess.Popen[bytes] | None = None
        self.dcs = json.loads(json.dumps(DCS))
        self.dcs["synchronous_mode"] = synchronous
        self.nodes: list[PatroniNode] = []
        self.removed: list[PatroniNode] = []
        for _ in range(size):
            self._new_node()

    def _new_node(self) -> PatroniNode:
        index = len(self.nodes) + len(self.removed)
        folder = self.base / f"node{index}"
        folder.mkdir()
        own(folder, self.user)
        node = PatroniNode(
            name=f"node{index}", folder=folder, port=free_port(), api_port=free_port(), rig=self
        )
        config = {
            "scope": self.scope,
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{node.api_port}",
                "connect_address": f"127.0.0.1:{node.api_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": self.dcs,
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}, "no-sync"],
                "pg_hba": HBA,
            },
            "postgresql": {
                "listen": f"127.0.0.1:{node.port}",
                "connect_address": f"127.0.0.1:{node.port}",
                "data_dir": str(node.data),
                "bin_dir": str(self.bindir),
                "pgpass": str(folder / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(folder)},
                # A new member's clone must not wait for a spread checkpoint (minutes).
                "basebackup": [{"checkpoint": "fast"}],
                "pg_hba": HBA,
            },
        }
        node.config.write_text(yaml.safe_dump(config))
        own(node.config, self.user)
        self.nodes.append(node)
        return node

    def spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        """A daemon of ours: output to ``log``, a minimal environment (nothing of ours leaks)."""
        tool = self.tools.get(command[0], command[0])
        with log.open("ab") as out:
            own(log, self.user)
            return subprocess.Popen(
                [tool, *command[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
                cwd=self.base,
                env={"PATH": "/usr/bin:/bin", "HOME": str(self.base), "LANG": "C.UTF-8"},
                start_new_session=True,
            )

    # --- life cycle ----------------------------------------------------------------

    def start(self, timeout: float = 90) -> None:
        """etcd, then every node; returns once a leader and a streaming replica per node run."""
        etcd_dir = self.base / "etcd"
        etcd_dir.mkdir()
        own(etcd_dir, self.user)
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = self.spawn(
            [
                "etcd",
                "--name=etcd0",
                f"--data-dir={etcd_dir / 'data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=etcd0={peer}",
                f"--initial-cluster-token={self.scope}",
            ],
            self.base / "etcd.log",
        )
        self._wait(
            lambda: self._etcd_healthy(), timeout, "etcd did not answer", self.base / "etcd.log"
        )
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout)

    def _etcd_healthy(self) -> bool:
        if self.etcd is not None and self.etcd.poll() is not None:
            raise RuntimeError(f"etcd exited: {self._tail(self.base / 'etcd.log')}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.etcd_port}/health", timeout=1
            ) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _wait(self, ready: Any, timeout: float, what: str, log: Path | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                detail = f":\n{self._tail(log)}" if log is not None else ""
                raise TimeoutError(f"{what} within {timeout:g} s{detail}")
            time.sleep(0.1)

    def add_node(self, timeout: float = 90) -> PatroniNode:
        """A new member: Patroni clones it from the leader; returns once it streams."""
        node = self._new_node()
        node.start()
        self.wait_healthy(timeout)
        return node

    def remove_node(self, node: PatroniNode) -> None:
        """Stop a member for good (Patroni shuts it down and leaves the cluster)."""
        node.stop()
        self.nodes.remove(node)
        self.removed.append(node)

    def close(self) -> None:
        """Stop every node, then etcd, then delete the folder: only what was started here."""
        for node in self.nodes + self.removed:
            with contextlib.suppress(Exception):
                node.stop(timeout=15)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            try:
                self.etcd.wait(10)
            except subprocess.TimeoutExpired:
                self.etcd.kill()
                self.etcd.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PatroniCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- what Patroni says ---------------------------------------------------------

    def cluster_view(self) -> dict[str, Any] | None:
        """``GET /cluster`` from the first node that answers."""
        for node in self.nodes:
            status, body = node.rest("/cluster")
            if status == 200 and isinstance(body, dict):
                return body
        return None

    def members(self) -> dict[str, dict[str, Any]]:
        view = self.cluster_view() or {}
        return {member["name"]: member for member in view.get("members", [])}

    def node(self, name: str) -> PatroniNode:
        return next(node for node in self.nodes if node.name == name)

    def leader(self) -> PatroniNode:
        """The node that runs as leader and takes writes (asked of PostgreSQL, not of REST)."""
        for name, member in self.members().items():
            if member.get("role") == "leader":
                node = self.node(name)
                with contextlib.suppress(psycopg.Error):
                    if not node.value("SELECT pg_is_in_recovery()"):
                        return node
        raise RuntimeError(f"{self.scope} has no running leader: {self.members()}")

    def healthy(self) -> bool:
        """A leader, every other node streaming from it, and a synchronous standby if asked."""
        names = {node.name for node in self.nodes}
        # A member removed may linger in the store (stopped) until its key expires.
        members = {name: m for name, m in self.members().items() if name in names}
        if len(members) != len(self.nodes):
            return False
        roles = [m.get("role") for m in members.values()]
        if roles.count("leader") != 1:
            return False
        if self.dcs["synchronous_mode"] and "sync_standby" not in roles:
            return False
        if any(m.get("state") not in ("running", "streaming") for m in members.values()):
            return False
        try:
            leader = self.leader()
            streaming = leader.value(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            )
        except (RuntimeError, psycopg.Error):
            return False
        return int(streaming) == len(self.nodes) - 1

    def wait_healthy(self, timeout: float = 90) -> None:
        try:
            self._wait(self.healthy, timeout, f"{self.scope} did not become healthy")
        except TimeoutError as error:
            members = {n: (m.get("role"), m.get("state")) for n, m in self.members().items()}
            logs = "\n".join(f"{n.name}: {self._tail(n.log, 5)}" for n in self.nodes)
            raise TimeoutError(f"{error}: members {members}\n{logs}") from None

    def wait_new_leader(self, old: PatroniNode, timeout: float = 60) -> PatroniNode:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(RuntimeError):
                leader = self.leader()
                if leader is not old:
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"no leader other than {old.name}: {self.members()}")
            time.sleep(0.05)

    def patronictl(self, *args: str, timeout: float = 60) -> str:
        return run(
            [self.tools["patronictl"], "-c", str(self.nodes[0].config), *args],
            self.user,
            timeout=timeout,
        )

    def switchover(self, candidate: PatroniNode | None = None) -> None:
        """``patronictl switchover --force`` (to ``candidate``, else Patroni's choice)."""
        leader = self.leader()
        args = ["switchover", self.scope, "--leader", leader.name, "--force"]
        if candidate is not None:
            args += ["--candidate", candidate.name]
        self.patronictl(*args)

    # --- for the package -----------------------------------------------------------

    def connection(self, dbname: str = "omejdn", **params: str) -> ConnectionSettings:
        """libpq's multi-host connection over every node, as an application would write it."""
        return ConnectionSettings(
            {
                "host": ",".join("127.0.0.1" for _ in self.nodes),
                "port": ",".join(str(node.port) for node in self.nodes),
                "user": "postgres",
                "dbname": dbname,
            }
            | params
        )

    @property
    def rest_urls(self) -> list[str]:
        return [node.api for node in self.nodes]

    def wait_member(self, node: PatroniNode, ready: Any, timeout: float = 60) -> float:
        """Until Patroni's ``/cluster`` shows ``node`` as ``ready(member)``; when it did."""
        self._wait(lambda: ready(self.members().get(node.name)), timeout, f"{node.name} not")
        return time.monotonic()

    def create_database(self, name: str = "omejdn") -> None:
        """A database at the head schema on the leader (the standbys replay it)."""
        from psycopg import sql

        from omejdn_pg.postgres import migrate as migrations

        leader = self.leader()
        with leader.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        migrations.upgrade(leader.settings(name))


@contextlib.contextmanager
def patroni_or_fail(*, synchronous: bool = True) -> Iterator[PatroniCluster]:
    """A running cluster with the ``omejdn`` database for a fixture; a test failure with the
    reason if the rig cannot be had (never a skip: a missing rig must not look green)."""
    import pytest

    try:
        cluster = PatroniCluster(synchronous=synchronous)
    except RigUnavailable as error:
        pytest.fail(f"no Patroni rig: {error}")
    with cluster:
        cluster.start()
        cluster.create_database()
        yield cluster
