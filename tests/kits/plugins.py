"""The plugin file of a test and what it loads: the ``postgres_backend`` plugin and its
read cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.postgres.cache.read_cache import ReadCache
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.settings.connection import ConnectionSettings

ALL_GROUPS = "[config, keys, client, user]"


def plugin_yaml(
    connection: ConnectionSettings,
    *,
    bcrypt_rounds: int = 4,
    handlers: str | None = None,
    cache: str | None = None,
    backend: str = "",
    deactivate: str = ALL_GROUPS,
    postgres_by_default: bool = True,
    extra: str = "",
) -> str:
    """An Omejdn plugin file serving every group from PostgreSQL at ``connection``.

    bcrypt cost 4 keeps each stored password cheap (the service's tests take 5, so a
    cost-4 hash is upgraded at login); ``handlers``, ``cache``: those settings of the
    postgres_backend section (None: the package's default); ``backend``: more lines of
    that section, indented by six spaces; ``deactivate``: Omejdn's defaults switched
    off; ``postgres_by_default``: new users and clients go to PostgreSQL (what the
    storage service, which serves every group anyway, does not say); ``extra``: more
    top-level lines.
    """
    params = "".join(f"         {k}: '{v}'\n" for k, v in connection.params.items())
    text = f"plugins:\n   postgres_backend:\n      connection:\n{params}"
    if handlers is not None:
        text += f"      handlers: {handlers}\n"
    text += f"      passwords: {{bcrypt_rounds: {bcrypt_rounds}}}\n"
    if cache is not None:
        text += f"      cache: {cache}\n"
    text += f"{backend}deactivate_defaults: {deactivate}\n"
    if postgres_by_default:
        text += "user_backend_default: postgres\nclient_backend_default: postgres\n"
    return text + extra


def plugin_file(path: Path, connection: ConnectionSettings, **options: Any) -> Path:
    """:func:`plugin_yaml` (with the same ``options``) written to ``path``."""
    path.write_text(plugin_yaml(connection, **options))
    return path


def plugin(loader: PluginLoader) -> PostgresBackendPlugin:
    """The postgres_backend plugin ``loader`` loaded."""
    found = loader.plugins["postgres_backend"]
    assert isinstance(found, PostgresBackendPlugin)
    return found


def cache_of(loader: PluginLoader) -> ReadCache:
    """That plugin's read cache (it must have one)."""
    cache = plugin(loader).cache
    assert cache is not None
    return cache
