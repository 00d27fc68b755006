"""Fixtures of the end-to-end tests: Omejdn's way in and the command line's.

Omejdn loads a plugin file and fires events through its loader (``loader``;
``plugin_host`` is the Host over that same loader, for what Omejdn does
through its stores); the command line builds its Host from the backend's
settings, with no plugin file (``host``; ``any_host`` runs a test with private keys
sealed and unsealed). All run on this test's database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from omejdn_pg import PluginLoader
from omejdn_pg.sealing import generate_secret
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.plugins import plugin_file
from tests.secrets import watch

KEK_ENV = "OMEJDN_PG_TEST_EVENTS_KEK"


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


@pytest.fixture(params=["unsealed", "sealed"])
def any_host(
    request: pytest.FixtureRequest, database: ConnectionSettings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Host]:
    """``host`` storing private keys as they are, and again sealed under a key-encryption
    key: every test that takes it runs both ways."""
    settings = BackendSettings(connection=database)
    if request.param == "sealed":
        monkeypatch.setenv(KEK_ENV, watch(generate_secret()))
        settings = dataclasses.replace(settings, key_encryption=({"id": "kek", "env": KEK_ENV},))
    with Host.from_settings(settings) as facade:
        yield facade
