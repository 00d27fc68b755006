"""The host the bench measures: Omejdn's plugin loader, configured from a plugin file.

The bench does not wire the plugin by hand: it writes the static plugin file
an operator would (connection, handlers, passwords) and loads it with
``PluginLoader.from_files``, so the events go through the same set-up as in
production. Password hashes use bcrypt cost 4, the cost the seeded hashes
have, so a login never rehashes. The pool is the documented default unless a
size is asked for (the throughput series compares both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bench import seed
from omejdn_pg import Host, PluginLoader
from omejdn_pg.settings import ConnectionSettings


def plugin_file(
    directory: Path, settings: ConnectionSettings, pool_size: int | None = None
) -> Path:
    """A plugin file for ``settings`` in ``directory``; every default file plugin deactivated."""
    backend: dict[str, Any] = {
        "connection": dict(settings.params),
        "passwords": {"scheme": "bcrypt", "bcrypt_rounds": seed.BCRYPT_COST},
    }
    if pool_size is not None:
        backend["pool"] = {"size": pool_size}
    document = {
        "plugins": {"postgres_backend": backend},
        "deactivate_defaults": ["config", "keys", "client", "user"],
        "user_backend_default": "postgres",
        "client_backend_default": "postgres",
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"plugins-{settings.params.get('dbname', 'db')}-{pool_size or 'default'}.yml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def open_host(settings: ConnectionSettings, directory: Path, pool_size: int | None = None) -> Host:
    """A host over ``settings`` as Omejdn would load it from its plugin file."""
    return Host(PluginLoader.from_files([plugin_file(directory, settings, pool_size)]))
