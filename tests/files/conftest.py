"""Fixtures of the file-store tests: Omejdn's default plugins over this test's folder,
no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from omejdn_pg.host.files.plugins import register_defaults
from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.service.host import Host


@pytest.fixture
def loader(tmp_path: Path) -> PluginLoader:
    """A loader with every default file plugin, its files under ``tmp_path``."""
    files = PluginLoader(base_dir=tmp_path)
    register_defaults(files, frozenset())
    return files


@pytest.fixture
def host(loader: PluginLoader) -> Host:
    """The Host over ``loader``."""
    return Host(loader)
