"""Reading the static configuration and loading plugins: where handlers meet their dependencies.

:class:`PluginLoader` is the :class:`~omejdn_pg.host.events.EventBus` plus
Omejdn's way of filling it: the default file plugins that
``deactivate_defaults`` does not name are registered first, then every plugin
of the static configuration is found through the ``omejdn.plugins`` entry-point
group and its ``init(loader)`` called. Keeping this out of the contract module
is what lets plugins import the contract without an import cycle.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Final

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.host.events import EventBus
from omejdn_pg.host.files.plugins import FILE_BACKEND, register_defaults
from omejdn_pg.settings.static import StaticConfiguration

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "omejdn.plugins"


class PluginLoader(EventBus):
    """Omejdn's PluginLoader: the event registry, filled from the static configuration."""

    @classmethod
    def from_files(
        cls,
        paths: Iterable[str | os.PathLike[str]],
        *,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> PluginLoader:
        """A loader with the plugins and defaults that the static configuration asks for."""
        loader = cls(StaticConfiguration.from_files(paths), base_dir=base_dir)
        loader.load_plugins()
        return loader

    @classmethod
    def from_env(cls, *, base_dir: str | os.PathLike[str] | None = None) -> PluginLoader:
        """As :meth:`from_files`, with the files named by ``OMEJDN_PLUGINS``."""
        loader = cls(StaticConfiguration.from_env(), base_dir=base_dir)
        loader.load_plugins()
        return loader

    def load_plugins(self, *, check: bool = True) -> None:
        """Register the active default plugins, then init every configured plugin."""
        configuration = self.configuration
        inactive = configuration.deactivate_defaults
        register_defaults(self, inactive)
        for group in ("user", "client"):
            if group not in inactive:
                self.declare_backend(group, FILE_BACKEND)
        try:
            for name in configuration.plugins:
                self._load_plugin(name)
            if check:
                self.check_backend_defaults()
        except BaseException:
            self.close()
            raise

    def _load_plugin(self, name: str) -> object:
        found = entry_points(group=ENTRY_POINT_GROUP, name=name)
        if not found:
            available = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise ConfigurationError(
                f"{self.configuration.source}: plugins.{name}: no such plugin is installed "
                f"(entry points in {ENTRY_POINT_GROUP}: {', '.join(available) or 'none'})"
            )
        factory = next(iter(found)).load()
        plugin = factory()
        # Registered before init, so close() reaches it if init fails halfway.
        self.plugins[name] = plugin
        plugin.init(self)
        log.info("loaded plugin %s", name)
        return plugin
