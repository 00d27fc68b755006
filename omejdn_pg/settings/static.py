"""Omejdn's static plugin configuration: the ``OMEJDN_PLUGINS`` files, merged.

The files are the ones Omejdn itself reads (``OMEJDN_PLUGINS``, ``:``-separated,
merged in order, later keys win), so one file configures the Ruby server and
this package alike. Reading them needs no database driver: the backend's own
section is validated only when :meth:`StaticConfiguration.backend_settings`
asks for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.settings.checks import string_list
from omejdn_pg.yamlio import parse_yaml

if TYPE_CHECKING:
    from omejdn_pg.settings.backend import BackendSettings

DEFAULT_PLUGINS: Final = ("config", "keys", "client", "user")
PLUGINS_ENV: Final = "OMEJDN_PLUGINS"
_TOP_LEVEL_KEYS: Final = (
    "plugins",
    "deactivate_defaults",
    "user_backend_default",
    "client_backend_default",
)


@dataclass(frozen=True)
class StaticConfiguration:
    """The merged static configuration of all plugin files."""

    data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The merged YAML; kept out of the repr because it holds the connection password."""
    files: tuple[Path, ...] = ()

    @property
    def source(self) -> str:
        return ", ".join(str(f) for f in self.files) or "<no plugin file>"

    @property
    def plugins(self) -> Mapping[str, Any]:
        plugins = self.data.get("plugins") or {}
        if not isinstance(plugins, Mapping):
            raise ConfigurationError(f"{self.source}: 'plugins' must be a mapping of plugin names")
        return plugins

    @property
    def deactivate_defaults(self) -> frozenset[str]:
        value = self.data.get("deactivate_defaults") or []
        names = string_list(value, f"{self.source}: 'deactivate_defaults'")
        unknown = sorted(set(names) - set(DEFAULT_PLUGINS))
        if unknown:
            raise ConfigurationError(
                f"{self.source}: 'deactivate_defaults' names unknown default plugin(s) "
                f"{', '.join(map(repr, unknown))}; allowed: {', '.join(DEFAULT_PLUGINS)}"
            )
        return frozenset(names)

    @property
    def user_backend_default(self) -> str | None:
        """The static file's ``user_backend_default``, or None when it names none."""
        return self._backend_default("user_backend_default")

    @property
    def client_backend_default(self) -> str | None:
        return self._backend_default("client_backend_default")

    def _backend_default(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigurationError(
                f"{self.source}: '{key}' must be a backend name, e.g. postgres"
            )
        return value

    def backend_settings(self) -> BackendSettings:
        """The validated ``plugins.postgres_backend`` section."""
        # Imported here: the validation imports the driver, the rest of this module does not.
        from omejdn_pg.settings.backend import PLUGIN_NAME
        from omejdn_pg.settings.validation import parse_backend_section

        return parse_backend_section(self.plugins.get(PLUGIN_NAME), self.source)

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> StaticConfiguration:
        merged: dict[str, Any] = {}
        files = tuple(Path(p) for p in paths)
        for path in files:
            merged = _deep_merge(merged, _load_yaml_mapping(path))
        unknown = sorted(set(merged) - set(_TOP_LEVEL_KEYS))
        if unknown:
            source = ", ".join(map(str, files))
            raise ConfigurationError(
                f"{source}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(_TOP_LEVEL_KEYS)}"
            )
        return cls(merged, files)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StaticConfiguration:
        value = (environ if environ is not None else os.environ).get(PLUGINS_ENV, "")
        return cls.from_files(p for p in value.split(":") if p)


def _load_yaml_mapping(path: Path) -> Mapping[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read plugin file: {exc.strerror}") from exc
    data = parse_yaml(text, str(path), error=ConfigurationError)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{path}: a plugin file must hold a mapping at its top level")
    return data


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
