"""The read cache's change hook, which the storage service's ``watch`` stream rides on:
a subscriber hears of its own process's writes and of other writers' notices, per group,
and of a flush as "everything"."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from omejdn_pg import PluginLoader
from omejdn_pg.host import events
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.plugins import plugin_file


def test_a_subscriber_hears_own_and_foreign_writes_per_group(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    reader_file = plugin_file(tmp_path / "reader.yml", database, cache="{max_staleness: 0.5}")
    writer_file = plugin_file(tmp_path / "writer.yml", database, cache="false")
    heard: list[frozenset[str] | None] = []
    lock = threading.Lock()

    def listener(groups: frozenset[str] | None) -> None:
        with lock:
            heard.append(groups)

    with (
        PluginLoader.from_files([reader_file], base_dir=tmp_path) as reader,
        PluginLoader.from_files([writer_file], base_dir=tmp_path) as writer,
    ):
        plugin = reader.plugins["postgres_backend"]
        assert isinstance(plugin, PostgresBackendPlugin)
        assert plugin.cache is not None
        assert plugin.cache.wait_until_serving(5)
        unsubscribe = plugin.cache.subscribe(listener)
        reader.fire(events.CONFIGURATION_STORE, section="omejdn", data={"a": 1})
        with lock:
            assert frozenset({"config"}) in heard
            heard.clear()
        writer.fire(events.CONFIGURATION_STORE, section="scope_mapping", data={"b": [1]})
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with lock:
                if frozenset({"config"}) in heard:
                    break
            time.sleep(0.01)
        with lock:
            assert frozenset({"config"}) in heard, heard
            heard.clear()
        unsubscribe()
        reader.fire(events.CONFIGURATION_STORE, section="omejdn", data={"a": 2})
        with lock:
            assert heard == []
        unsubscribe = plugin.cache.subscribe(listener)
        plugin.cache.close()
        with lock:
            # The notice of the last write may come first: the close is what is checked.
            assert heard[-1] is None
