"""The composition root: a loader with its backends wired, from settings, files or the environment.

Omejdn wires a plugin through ``init(loader)``, which reads the plugin's
section of the static configuration; :func:`from_files` and :func:`from_env`
take that road (:class:`~omejdn_pg.host.loader.PluginLoader`). A program that
holds :class:`~omejdn_pg.settings.BackendSettings` already — the CLI, the
bridge, the tests, the benchmarks — takes :func:`from_settings`, the one place
that builds the PostgreSQL plugin by hand: its database, keyring and password
policy, then its handlers. The Host (:mod:`omejdn_pg.service.host`) wraps the
loader this returns and adds no wiring of its own, so this module sits below
the service layer and above both halves it composes: Omejdn's side
(:mod:`omejdn_pg.host`) and the backend (:mod:`omejdn_pg.postgres`), which
never import each other.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.sealing import Keyring
from omejdn_pg.settings.backend import BACKEND_NAME, PLUGIN_NAME, BackendSettings
from omejdn_pg.settings.static import DEFAULT_PLUGINS, StaticConfiguration


def from_files(
    paths: Iterable[str | os.PathLike[str]], *, base_dir: str | os.PathLike[str] | None = None
) -> PluginLoader:
    """The plugins and defaults the static configuration files ask for."""
    return PluginLoader.from_files(paths, base_dir=base_dir)


def from_env(*, base_dir: str | os.PathLike[str] | None = None) -> PluginLoader:
    """As :func:`from_files`, with the files named by ``OMEJDN_PLUGINS``."""
    return PluginLoader.from_env(base_dir=base_dir)


def from_settings(
    settings: BackendSettings,
    *,
    defaults: frozenset[str] = frozenset(),
    base_dir: str | os.PathLike[str] | None = None,
    user_backend_default: str = BACKEND_NAME,
    client_backend_default: str = BACKEND_NAME,
    database: Database | None = None,
) -> PluginLoader:
    """A loader whose postgres backend uses ``settings`` (or an open ``database``),
    with only the default file plugins named in ``defaults``."""
    configuration = StaticConfiguration(
        {
            "deactivate_defaults": [d for d in DEFAULT_PLUGINS if d not in defaults],
            "user_backend_default": user_backend_default,
            "client_backend_default": client_backend_default,
        }
    )
    loader = PluginLoader(configuration, base_dir=base_dir)
    loader.load_plugins(check=False)
    plugin = PostgresBackendPlugin()
    plugin.settings = settings
    plugin.keyring = Keyring.from_settings(settings.key_encryption)
    plugin.attach(database or Database.for_backend(settings), PasswordPolicy(settings.passwords))
    plugin.register(loader, settings.handlers)
    loader.plugins[PLUGIN_NAME] = plugin
    try:
        loader.check_backend_defaults()
    except BaseException:
        loader.close()
        raise
    return loader
