"""The read cache across real processes: a write here is seen by a cache over there.

The other process is this module run as ``python -m tests.postgres.test_cache_process
PLUGINS``: it reads a section through its cache in a tight loop and reports every run of
reads that answered the same value, with when the first and the last of them began
(``time.monotonic()``, one clock for every process on Linux). A run of value n whose last
read began ``max_staleness`` or more after the write of n + 1 returned here is a broken
promise on any schedule; a busy machine only delays the reports. Typical delays are the
bench's (``bench/staleness.py``), never asserted here.
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

from omejdn_pg import PluginLoader
from omejdn_pg.host import events
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.plugins import plugin_file
from tests.kits.staleness import GIVE_UP, served_late

BOUND: Final = 0.5
SECTION: Final = "process_staleness"
WRITES: Final = 20
REPOSITORY: Final = Path(__file__).resolve().parents[2]


def test_a_write_is_seen_by_another_process_within_the_bound(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    writer_file = plugin_file(tmp_path / "writer.yml", database, cache="false")
    reader_file = plugin_file(
        tmp_path / "reader.yml", database, cache=f"{{config: true, max_staleness: {BOUND}}}"
    )
    committed: dict[int, float] = {}
    runs: list[tuple[int, float, float]] = []
    with PluginLoader.from_files([writer_file], base_dir=tmp_path) as writer:
        # The first write creates the section's table, before the reader caches its absence.
        writer.fire(events.CONFIGURATION_STORE, section=SECTION, data={"n": 0})
        reader = OtherProcess(reader_file)
        try:
            reader.expect("ready")
            for n in range(1, WRITES + 1):
                writer.fire(events.CONFIGURATION_STORE, section=SECTION, data={"n": n})
                committed[n] = time.monotonic()
                # Its first answer of n ends the run of what n replaced.
                while not runs or runs[-1][0] < n - 1:
                    runs.append(reader.run())
            stats = reader.stop(runs)
        finally:
            reader.kill()
    assert [value for value, _, _ in runs] == list(range(WRITES + 1))  # never back, none missed
    late = {
        value: served_late(last, committed[value + 1])
        for value, _, last in runs
        if value + 1 in committed
    }
    assert max(late.values()) < BOUND, late
    assert stats["hits"] > 0, stats
    # Each write was heard as a notice, not caught by the poll of the counters.
    assert stats["notices"] >= WRITES, stats


class OtherProcess:
    """The reading process, driven through its stdin (closed: stop) and stdout (reports)."""

    def __init__(self, plugins: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.postgres.test_cache_process", str(plugins)],
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
        self.lines.put(None)  # it exited: nothing more will come

    def expect(self, word: str) -> str:
        """The rest of the next line, which must start with ``word``."""
        try:
            line = self.lines.get(timeout=GIVE_UP)
        except queue.Empty:
            raise AssertionError(f"the reading process said nothing for {GIVE_UP:g}s") from None
        if line is None:
            raise AssertionError(f"the reading process exited ({self.process.wait()})")
        found, _, rest = line.partition(" ")
        assert found == word, line
        return rest

    def run(self) -> tuple[int, float, float]:
        """The next run of reads: (value, when its first read began, when its last did)."""
        value, first, last = self.expect("run").split()
        return int(value), float(first), float(last)

    def stop(self, runs: list[tuple[int, float, float]]) -> dict[str, Any]:
        """Close its stdin; the runs it still reports go to ``runs``; its cache's stats."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        while True:
            line = self.lines.get(timeout=GIVE_UP)
            assert line is not None, "the reading process exited without its stats"
            word, _, rest = line.partition(" ")
            if word == "stats":
                self.process.wait(timeout=GIVE_UP)
                stats: dict[str, Any] = json.loads(rest)
                return stats
            assert word == "run", line
            value, first, last = rest.split()
            runs.append((int(value), float(first), float(last)))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=GIVE_UP)


def read_until_stdin_closes(plugins: str) -> int:
    """The other process: read ``SECTION`` through the cache, report each run of answers."""
    with PluginLoader.from_files([plugins], base_dir=Path(plugins).parent) as loader:
        plugin = loader.plugins["postgres_backend"]
        assert isinstance(plugin, PostgresBackendPlugin)
        assert plugin.cache is not None, "the plugin file enables no cache"
        if not plugin.cache.wait_until_serving(GIVE_UP):
            raise RuntimeError(f"the cache was not serving within {GIVE_UP:g}s")
        done = threading.Event()

        def wait_for_eof() -> None:
            sys.stdin.read()
            done.set()

        def read() -> tuple[int, float]:
            asked = time.monotonic()
            (answer,) = loader.fire(events.CONFIGURATION_LOAD, section=SECTION, fallback=None)
            return answer["n"], asked

        threading.Thread(target=wait_for_eof, daemon=True).start()
        value, asked = read()  # the value before the first write: its run comes first
        run = (value, asked, asked)
        print("ready", flush=True)
        while not done.is_set():
            time.sleep(0.0002)
            value, asked = read()
            if value == run[0]:
                run = (value, run[1], asked)
            else:
                print("run {} {!r} {!r}".format(*run), flush=True)
                run = (value, asked, asked)
        print("run {} {!r} {!r}".format(*run), flush=True)
        print("stats " + json.dumps(plugin.stats()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(read_until_stdin_closes(sys.argv[1]))
