"""Fixtures of the end-to-end tests: Omejdn's way in and the command line's.

Omejdn loads a plugin file and fires events through its loader (``loader``;
``plugin_host`` is the Host over that same loader, for what Omejdn does
through its stores); the command line builds its Host from the backend's
settings, with no plugin file (``host``). Both run on this test's database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from omejdn_pg import PluginLoader
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.plugins import plugin_file


@pytest.fixture
def loader(database: ConnectionSettings, tmp_path: Path) -> Iterator[PluginLoader]:
    """The loader of a plugin file serving every group from this test's database."""
    path = plugin_file(tmp_path / "plugins.yml", database)
    with PluginLoader.from_files([path], base_dir=tmp_path) as loaded:
        yield loaded


@pytest.fixture
def plugin_host(loader: PluginLoader) -> Host:
    """The Host over ``loader`` (closed with it)."""
    return Host(loader)


@pytest.fixture
def host(database: ConnectionSettings) -> Iterator[Host]:
    """The Host the command line builds: from the backend's settings alone."""
    with Host.from_settings(BackendSettings(connection=database)) as facade:
        yield facade
