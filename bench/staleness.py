"""Cross-process staleness: how long after a write's commit another process's cache
stops serving the old value.

Two processes on one database. This one writes a configuration section through a
loader without cache, as a second Omejdn worker would; the other
(``python -m bench.staleness reader PLUGINS``) reads the section through its read
cache in a tight loop and prints each new value with its ``time.monotonic()``. On
Linux that clock is one for every process, so the difference from the writer's
own reading just after ``fire`` returned is the delay the requirement bounds
(within 100 ms p99). The reader polls every 0.2 ms, so that is the resolution; a
delay can come out slightly negative when the notice overtakes the commit's reply.

The section is one of its own, so the seeded configuration the other cases read
stays as it was. The bound (``max_staleness``) only matters when a notice is lost:
the figures measure the notices, the bound is what the cache promises regardless.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import yaml

from omejdn_pg import PluginLoader
from omejdn_pg.host import events
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.settings.connection import ConnectionSettings

BOUND: Final = 0.5
"""The reader's ``max_staleness`` in seconds: half the default, so a lost notice shows."""
SECTION: Final = "bench_staleness"
REPOSITORY: Final = Path(__file__).resolve().parents[1]
POLL_S: Final = 0.0002


def plugin_file(path: Path, connection: ConnectionSettings, cache: Any) -> Path:
    """A plugin file for ``connection`` with ``cache`` as its cache setting."""
    document = {
        "plugins": {"postgres_backend": {"connection": dict(connection.params), "cache": cache}},
        "deactivate_defaults": ["config", "keys", "client", "user"],
        "user_backend_default": "postgres",
        "client_backend_default": "postgres",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


class Reader:
    """The other process, driven through its stdin (closed: stop) and stdout (reports)."""

    def __init__(self, plugins: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.staleness", "reader", str(plugins)],
            cwd=REPOSITORY,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)  # end of output: the reader exited, nothing more will come

    def expect(self, word: str, timeout: float = 30) -> list[str]:
        """The rest of the next line starting with ``word``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"the reader said no {word!r} within {timeout}s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"the reader exited ({self.process.wait()}) before {word!r}")
            fields = line.split(" ", 1)
            if fields[0] == word:
                return fields[1:]

    def stop(self) -> dict[str, Any]:
        """The reader's cache statistics, once it has finished."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        (stats,) = self.expect("stats")
        self.process.wait(timeout=30)
        result: dict[str, Any] = json.loads(stats)
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(
    connection: ConnectionSettings, writes: int, folder: Path, bound: float = BOUND
) -> dict[str, Any]:
    """Seconds from each write's commit to the other process serving the new value:
    p50, p99 and max over ``writes`` writes, the bound, and the reader's cache stats."""
    writer_file = plugin_file(folder / "staleness-writer.yml", connection, False)
    reader_file = plugin_file(
        folder / "staleness-reader.yml", connection, {"config": True, "max_staleness": bound}
    )
    delays: list[float] = []
    with PluginLoader.from_files([writer_file], base_dir=folder) as writer:
        # The first write creates the section's table, before the reader caches its absence.
        writer.fire(events.CONFIGURATION_STORE, section=SECTION, data={"n": 0})
        reader = Reader(reader_file)
        try:
            reader.expect("ready")
            for n in range(1, writes + 1):
                writer.fire(events.CONFIGURATION_STORE, section=SECTION, data={"n": n})
                committed = time.monotonic()
                while True:
                    seen, at = reader.expect("seen")[0].split()
                    if int(seen) == n:
                        break
                delays.append(float(at) - committed)
            stats = reader.stop()
        finally:
            reader.kill()
    ordered = sorted(delays)
    return {
        "event": "CONFIGURATION_STORE here, CONFIGURATION_LOAD through the cache over there",
        "writes": writes,
        "max_staleness_s": bound,
        "p50_s": round(_percentile(ordered, 0.5), 6),
        "p99_s": round(_percentile(ordered, 0.99), 6),
        "max_s": round(ordered[-1], 6),
        "reader": stats,
    }


# --- the other process ------------------------------------------------------------------


def reader(plugins: str) -> int:
    """Read ``SECTION`` through the cache until stdin closes; report each new value."""
    with PluginLoader.from_files([plugins], base_dir=Path(plugins).parent) as loader:
        plugin = loader.plugins["postgres_backend"]
        assert isinstance(plugin, PostgresBackendPlugin)
        assert plugin.cache is not None, "the reader's plugin file enables no cache"
        if not plugin.cache.wait_until_serving(30):
            raise RuntimeError("the reader's cache was not serving within 30 s")
        done = threading.Event()

        def wait_for_eof() -> None:
            sys.stdin.read()
            done.set()

        threading.Thread(target=wait_for_eof, daemon=True).start()
        print("ready", flush=True)
        last = None
        while not done.is_set():
            (answer,) = loader.fire(events.CONFIGURATION_LOAD, section=SECTION, fallback=None)
            if answer != last:
                print(f"seen {answer['n']} {time.monotonic()!r}", flush=True)
                last = answer
            time.sleep(POLL_S)
        print("stats " + json.dumps(plugin.stats()), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "reader":
        sys.exit(reader(sys.argv[2]))
    sys.exit("usage: python -m bench.staleness reader PLUGINS")
