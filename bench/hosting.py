"""The host the bench measures: Omejdn's plugin loader, configured from a plugin file.

The bench does not wire the plugin by hand: it writes the static plugin file
an operator would (connection, handlers, passwords) and loads it with
``PluginLoader.from_files``, so the events go through the same set-up as in
production. Password hashes use bcrypt cost 4, the cost the seeded hashes
have, so a login never rehashes. The pool is the documented default unless a
size is asked for (the throughput series compares both).

The uncached rows are measured with the read cache switched off (``cache:
false``), since a cached read sends no SQL and has no floor to be compared
with; the cached rows use a host with every group cached. A package without
the ``cache`` setting has no cache to switch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Final

import yaml

from bench import seed
from omejdn_pg import Host, PluginLoader
from omejdn_pg.settings.backend import BackendSettings
from omejdn_pg.settings.connection import ConnectionSettings

ALL_GROUPS: Final = ("user", "client", "config", "keys")


def has_cache() -> bool:
    """Whether this omejdn_pg has the read cache (a ``cache`` plugin setting)."""
    return "cache" in {f.name for f in dataclasses.fields(BackendSettings)}


def plugin_file(
    directory: Path,
    settings: ConnectionSettings,
    pool_size: int | None = None,
    cached: bool = False,
) -> Path:
    """A plugin file for ``settings`` in ``directory``; every default file plugin deactivated.

    ``cached``: every group's point reads cached; otherwise the cache is off.
    """
    backend: dict[str, Any] = {
        "connection": dict(settings.params),
        "passwords": {"scheme": "bcrypt", "bcrypt_rounds": seed.BCRYPT_COST},
    }
    if pool_size is not None:
        backend["pool"] = {"size": pool_size}
    if has_cache():
        backend["cache"] = dict.fromkeys(ALL_GROUPS, True) if cached else False
    document = {
        "plugins": {"postgres_backend": backend},
        "deactivate_defaults": ["config", "keys", "client", "user"],
        "user_backend_default": "postgres",
        "client_backend_default": "postgres",
    }
    directory.mkdir(parents=True, exist_ok=True)
    label = f"{settings.params.get('dbname', 'db')}-{pool_size or 'default'}"
    path = directory / f"plugins-{label}{'-cached' if cached else ''}.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def open_host(
    settings: ConnectionSettings,
    directory: Path,
    pool_size: int | None = None,
    cached: bool = False,
) -> Host:
    """A host over ``settings`` as Omejdn would load it from its plugin file."""
    return Host(PluginLoader.from_files([plugin_file(directory, settings, pool_size, cached)]))
