"""Where the bench runs: an embedded PostgreSQL of its own, or the server a DSN names.

Every run works in databases it creates (clones of one template migrated once)
and drops them at the end, so it never touches data it did not make, even on a
shared server. The embedded server is a throwaway, so it runs with
``synchronous_commit = off``: a write's latency is then the package's work and
its round trips, not this machine's disk flush, which would hide both. A server
given by ``OMEJDN_PG_BENCH_DSN`` is used as it is configured; either way the
settings that matter are recorded with the results.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg import sql

from bench.placement import Placement, starting_servers
from omejdn_pg.postgres import migrate
from omejdn_pg.settings.connection import ConnectionSettings

DSN_ENV: Final = "OMEJDN_PG_BENCH_DSN"
_REPORTED_SETTINGS: Final = ("server_version", "synchronous_commit", "fsync", "shared_buffers")


@dataclass
class Server:
    """The PostgreSQL server of this run and the databases made on it."""

    admin: ConnectionSettings
    embedded: bool
    prefix: str = field(default_factory=lambda: f"omejdn_pg_bench_{uuid.uuid4().hex[:8]}")
    created: list[str] = field(default_factory=list)
    template: str | None = None

    def execute(self, statement: sql.SQL | sql.Composed) -> None:
        with psycopg.connect(self.admin.conninfo(), autocommit=True) as conn:
            conn.execute(statement)

    def database(self, label: str) -> ConnectionSettings:
        """A new database at the head schema, dropped when the run ends."""
        if self.template is None:
            self.template = self._create(f"{self.prefix}_template", None)
            migrate.upgrade(self.admin.with_params(dbname=self.template))
        return self.admin.with_params(dbname=self._create(f"{self.prefix}_{label}", self.template))

    def _create(self, name: str, template: str | None) -> str:
        self.execute(
            sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template or "template0")
            )
        )
        self.created.append(name)
        return name

    def drop(self, settings: ConnectionSettings) -> None:
        name = settings.params["dbname"]
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            self.drop(self.admin.with_params(dbname=name))

    def backend_cores(self) -> list[int]:
        """The cores a new backend of this server (on this machine) may run on."""
        with psycopg.connect(self.admin.conninfo(), autocommit=True) as conn:
            return sorted(os.sched_getaffinity(conn.info.backend_pid))

    def describe(self) -> dict[str, Any]:
        """What the figures depend on: the server, its durability settings, the transport."""
        with psycopg.connect(self.admin.conninfo(), autocommit=True) as conn:
            found: dict[str, Any] = {
                name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]  # type: ignore[index]
                for name in _REPORTED_SETTINGS
            }
            host = conn.info.host
        found["kind"] = "embedded (pgserver)" if self.embedded else f"${DSN_ENV}"
        found["transport"] = "unix socket" if host.startswith("/") else f"tcp {host}"
        found["libpq"] = psycopg.pq.version()
        return found


@contextmanager
def start(dsn: str | None = None, placement: Placement | None = None) -> Iterator[Server]:
    """The server named by ``dsn`` (or ``$OMEJDN_PG_BENCH_DSN``), else a new embedded one,
    on ``placement``'s server cores."""
    dsn = dsn or os.environ.get(DSN_ENV)
    if dsn:
        server = Server(ConnectionSettings.from_url(dsn), embedded=False)
        try:
            yield server
        finally:
            server.drop_all()
        return
    import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="omejdn-pg-bench-"))
    with starting_servers(placement):
        embedded = pgserver.get_server(data_dir, cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        server = Server(ConnectionSettings.from_url(embedded.get_uri()), embedded=True)
        server.execute(sql.SQL("ALTER SYSTEM SET synchronous_commit = off"))
        server.execute(sql.SQL("SELECT pg_reload_conf()"))
        try:
            yield server
        finally:
            server.drop_all()
    finally:
        embedded.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)
