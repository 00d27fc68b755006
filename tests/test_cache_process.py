"""The read cache across real processes: a write here is seen by a cache over there.

The other process is this module run as a script (``python -m tests.test_cache_process
reader PLUGINS``): it opens its own loader, reads a section in a loop and reports
each new value with its ``time.monotonic()`` — one clock for every process on
Linux — so the writer can tell how long after its commit the other process
stopped serving the old value.

Run as ``python -m tests.test_cache_process measure [--writes 200]`` it is also the
measurement quoted in the README: cross-process staleness (p50/p99/max over the
writes) and cached against uncached CONFIGURATION_LOAD in one process, on
``OMEJDN_PG_TEST_DSN`` or a throwaway embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from omejdn_pg import PluginLoader
from omejdn_pg.host import events
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.settings import ConnectionSettings
from tests.helpers import REPO

BOUND = 0.5
MARGIN = 1.0


def write_plugins(path: Path, connection: ConnectionSettings, cache: str) -> Path:
    params = "".join(f"         {k}: '{v}'\n" for k, v in connection.params.items())
    path.write_text(
        "plugins:\n"
        "   postgres_backend:\n"
        "      connection:\n"
        f"{params}"
        f"      cache: {cache}\n"
        "deactivate_defaults: [config, keys, client, user]\n"
        "user_backend_default: postgres\n"
        "client_backend_default: postgres\n"
    )
    return path


def _plugin(loader: PluginLoader) -> PostgresBackendPlugin:
    found = loader.plugins["postgres_backend"]
    assert isinstance(found, PostgresBackendPlugin)
    return found


class Reader:
    """The other process, driven through its stdout."""

    def __init__(self, plugins: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.test_cache_process", "reader", str(plugins)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())

    def expect(self, word: str, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the reader said no {word!r} within {timeout}s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            fields = line.split(" ", 1)
            if fields[0] == word:
                return fields[1:]

    def stop(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.close()
        (stats,) = self.expect("stats")
        self.process.wait(timeout=30)
        result: dict[str, Any] = json.loads(stats)
        return result


def staleness_across_processes(
    connection: ConnectionSettings, writes: int, folder: Path
) -> list[float]:
    """Seconds from each write's commit to the other process serving the new value."""
    writer_file = write_plugins(folder / "writer.yml", connection, "false")
    reader_file = write_plugins(folder / "reader.yml", connection, f"{{max_staleness: {BOUND}}}")
    with PluginLoader.from_files([writer_file], base_dir=folder) as writer:
        writer.fire(events.CONFIGURATION_STORE, section="omejdn", data={"n": 0})
        reader = Reader(reader_file)
        try:
            reader.expect("ready")
            delays = []
            for n in range(1, writes + 1):
                writer.fire(events.CONFIGURATION_STORE, section="omejdn", data={"n": n})
                committed = time.monotonic()
                while True:
                    seen, at = reader.expect("seen")[0].split()
                    if int(seen) == n:
                        break
                delays.append(float(at) - committed)
        finally:
            stats = reader.stop()
    assert stats["hits"] > 0, stats
    assert stats["notices"] >= writes, stats
    return delays


def test_a_write_is_seen_by_another_process_within_the_bound(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    delays = staleness_across_processes(database, 20, tmp_path)
    assert max(delays) <= BOUND + MARGIN, delays


# --- the other process ------------------------------------------------------------------


def reader(plugins: str) -> int:
    """Read section ``omejdn`` through the cache until stdin closes; report new values."""
    loader = PluginLoader.from_files([plugins], base_dir=Path(plugins).parent)
    with loader:
        plugin = _plugin(loader)
        assert plugin.cache is not None
        assert plugin.cache.wait_until_serving(30)
        done = threading.Event()

        def wait_for_eof() -> None:
            sys.stdin.read()
            done.set()

        threading.Thread(target=wait_for_eof, daemon=True).start()
        print("ready", flush=True)
        last = None
        while not done.is_set():
            (answer,) = loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback=None)
            if answer != last:
                print(f"seen {answer['n']} {time.monotonic()!r}", flush=True)
                last = answer
            time.sleep(0.0002)
        print("stats " + json.dumps(plugin.stats()), flush=True)
    return 0


# --- the measurement ------------------------------------------------------------------------


@contextmanager
def measurement_database() -> Iterator[ConnectionSettings]:
    """A fresh migrated database on ``OMEJDN_PG_TEST_DSN``, else on an embedded server."""
    dsn = os.environ.get("OMEJDN_PG_TEST_DSN")
    if dsn:
        yield from _fresh(ConnectionSettings.from_url(dsn))
        return
    import pgserver

    embedded = pgserver.get_server(
        Path(tempfile.mkdtemp(prefix="omejdn-pg-cache-")), cleanup_mode="delete"
    )
    try:
        yield from _fresh(ConnectionSettings.from_url(embedded.get_uri()))
    finally:
        embedded.cleanup()


def _fresh(server: ConnectionSettings) -> Iterator[ConnectionSettings]:
    from omejdn_pg.postgres import migrate

    name = f"omejdn_pg_cache_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        settings = server.with_params(dbname=name)
        migrate.upgrade(settings)
        yield settings
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


FLOOR_QUERY = "SELECT json_object_agg(key, value) FROM configuration_omejdn"


def point_read_latency(
    connection: ConnectionSettings, folder: Path, reads: int
) -> dict[str, float]:
    """Median microseconds per CONFIGURATION_LOAD, cached and uncached, in one process,
    interleaved in blocks of 1,000 so all see the same machine — and of the floor:
    raw psycopg on one persistent connection, a prepared statement, the same rows."""
    cached_file = write_plugins(folder / "cached.yml", connection, f"{{max_staleness: {BOUND}}}")
    plain_file = write_plugins(folder / "plain.yml", connection, "false")
    data = {f"key{i}": {"value": i, "list": [f"item{i}", i]} for i in range(10)}
    with (
        PluginLoader.from_files([cached_file], base_dir=folder) as cached,
        PluginLoader.from_files([plain_file], base_dir=folder) as plain,
        psycopg.connect(connection.conninfo(), autocommit=True) as raw,
    ):
        cache = _plugin(cached).cache
        assert cache is not None
        assert cache.wait_until_serving(30)
        plain.fire(events.CONFIGURATION_STORE, section="omejdn", data=data)
        time.sleep(0.2)

        def floor() -> None:
            raw.execute(FLOOR_QUERY, prepare=True).fetchall()

        def load(loader: PluginLoader) -> Callable[[], None]:
            return lambda: loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback=None)

        ways = {"cached": load(cached), "uncached": load(plain), "floor": floor}
        samples: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(max(1, reads // 1000)):
            for name, read in ways.items():
                start = time.perf_counter()
                for _ in range(1000):
                    read()
                samples[name].append((time.perf_counter() - start) / 1000 * 1e6)
        stats = cache.stats()
    result = {name: statistics.median(values) for name, values in samples.items()}
    result["hit_ratio"] = stats["hits"] / max(1, stats["hits"] + stats["misses"])
    return result


def measure(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_cache_process measure")
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--reads", type=int, default=10000)
    options = parser.parse_args(argv)
    with measurement_database() as connection, tempfile.TemporaryDirectory() as folder:
        latency = point_read_latency(connection, Path(folder), options.reads)
        delays = sorted(
            d * 1000 for d in staleness_across_processes(connection, options.writes, Path(folder))
        )
    p50 = delays[len(delays) // 2]
    p99 = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
    print(
        f"CONFIGURATION_LOAD, {options.reads} each way: cached {latency['cached']:.1f} µs, "
        f"uncached {latency['uncached']:.1f} µs, raw psycopg floor {latency['floor']:.1f} µs; "
        f"cached is {latency['uncached'] / latency['cached']:.0f}x uncached and "
        f"{latency['floor'] / latency['cached']:.1f}x the floor (hit ratio "
        f"{latency['hit_ratio']:.4f})"
    )
    print(
        f"cross-process staleness over {len(delays)} writes: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {delays[-1]:.1f} ms (bound {BOUND * 1000:.0f} ms)"
    )
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "reader":
        sys.exit(reader(sys.argv[2]))
    if command == "measure":
        sys.exit(measure(sys.argv[2:]))
    sys.exit("usage: python -m tests.test_cache_process reader PLUGINS | measure [--writes N]")
