"""The host contract: Omejdn's PluginLoader and its storage events.

Omejdn's core never talks to a storage backend directly; it fires an event and
every registered handler answers (``fire`` returns all answers, in
registration order). That is how several backends serve users or clients at
once, and why a handler must act only on what is its own.

Plugins are found through the ``omejdn.plugins`` entry-point group; loading
one calls its ``init(loader)``, which reads its section of the static
configuration from ``loader.configuration`` and registers handlers. The
default file-based plugins are registered first, unless deactivated.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final, Protocol

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.settings import StaticConfiguration

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "omejdn.plugins"

USER_GET: Final = "USER_GET"
USER_GET_ALL: Final = "USER_GET_ALL"
USER_CREATE: Final = "USER_CREATE"
USER_UPDATE: Final = "USER_UPDATE"
USER_DELETE: Final = "USER_DELETE"
USER_AUTHENTICATION_PASSWORD_CHANGE: Final = "USER_AUTHENTICATION_PASSWORD_CHANGE"  # noqa: S105
USER_AUTHENTICATION_PASSWORD_VERIFY: Final = "USER_AUTHENTICATION_PASSWORD_VERIFY"  # noqa: S105
CLIENT_GET: Final = "CLIENT_GET"
CLIENT_GET_ALL: Final = "CLIENT_GET_ALL"
CLIENT_CREATE: Final = "CLIENT_CREATE"
CLIENT_UPDATE: Final = "CLIENT_UPDATE"
CLIENT_DELETE: Final = "CLIENT_DELETE"
CLIENT_AUTHENTICATION_CERTIFICATE_GET: Final = "CLIENT_AUTHENTICATION_CERTIFICATE_GET"
CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE: Final = "CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE"
CONFIGURATION_STORE: Final = "CONFIGURATION_STORE"
CONFIGURATION_LOAD: Final = "CONFIGURATION_LOAD"
KEYS_STORE: Final = "KEYS_STORE"
KEYS_LOAD: Final = "KEYS_LOAD"
KEYS_LOAD_ALL: Final = "KEYS_LOAD_ALL"

USER_EVENTS: Final = (
    USER_GET,
    USER_GET_ALL,
    USER_CREATE,
    USER_UPDATE,
    USER_DELETE,
    USER_AUTHENTICATION_PASSWORD_CHANGE,
    USER_AUTHENTICATION_PASSWORD_VERIFY,
)
CLIENT_EVENTS: Final = (
    CLIENT_GET,
    CLIENT_GET_ALL,
    CLIENT_CREATE,
    CLIENT_UPDATE,
    CLIENT_DELETE,
    CLIENT_AUTHENTICATION_CERTIFICATE_GET,
    CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE,
)
CONFIG_EVENTS: Final = (CONFIGURATION_STORE, CONFIGURATION_LOAD)
KEY_EVENTS: Final = (KEYS_STORE, KEYS_LOAD, KEYS_LOAD_ALL)
STORAGE_EVENTS: Final = USER_EVENTS + CLIENT_EVENTS + CONFIG_EVENTS + KEY_EVENTS

Handler = Callable[..., Any]


class Plugin(Protocol):
    """What an ``omejdn.plugins`` entry point must provide."""

    def init(self, loader: PluginLoader) -> None: ...


class PluginLoader:
    """Registers handlers per event and fires events to all of them."""

    def __init__(
        self,
        configuration: StaticConfiguration | None = None,
        *,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.configuration = configuration or StaticConfiguration()
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        """Where the default plugins keep ``config/`` and ``keys/`` (Omejdn's working directory)."""
        self.plugins: dict[str, object] = {}
        self.backends: dict[str, set[str]] = {"user": set(), "client": set()}
        """Backend names serving users and clients, as their plugins declared them."""
        self._handlers: defaultdict[str, list[Handler]] = defaultdict(list)

    def register(self, event: str, handler: Handler) -> None:
        self._handlers[event].append(handler)

    def declare_backend(self, group: str, name: str) -> None:
        """Say that backend ``name`` now serves ``group`` (``user`` or ``client``)."""
        self.backends[group].add(name)

    def check_backend_defaults(self) -> None:
        """Refuse a ``*_backend_default`` that names no active backend.

        Otherwise every new user or client would be handed to nobody, and
        USER_CREATE would succeed without storing anything. A plugin that
        handles creates without declaring its backend name disables the check.
        """
        configuration = self.configuration
        for group, event, name in (
            ("user", USER_CREATE, configuration.user_backend_default),
            ("client", CLIENT_CREATE, configuration.client_backend_default),
        ):
            declared = self.backends[group]
            creators = len(self.handlers(event))
            if creators and creators == len(declared) and name not in declared:
                raise ConfigurationError(
                    f"{configuration.source}: '{group}_backend_default' is {name!r}, "
                    f"but no active {group} backend has that name; "
                    f"active: {', '.join(sorted(declared))}"
                )

    def handlers(self, event: str) -> tuple[Handler, ...]:
        return tuple(self._handlers.get(event, ()))

    def fire(self, event: str, **context: Any) -> list[Any]:
        """Every handler's answer to ``event``, in registration order."""
        return [handler(**context) for handler in self._handlers.get(event, ())]

    def close(self) -> None:
        """Release what the plugins hold (connection pools)."""
        for plugin in self.plugins.values():
            close = getattr(plugin, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> PluginLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        from omejdn_pg.host.files.plugins import FILE_BACKEND, register_defaults

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
