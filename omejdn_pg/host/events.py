"""The host contract: the storage events and the registry they are fired through.

Omejdn's core never talks to a storage backend directly; it fires an event and
every registered handler answers (``fire`` returns all answers, in
registration order). That is how several backends serve users or clients at
once, and why a handler must act only on what is its own.

This module is only the contract — event names, ``register``/``fire`` and the
backend names of the user and client groups. Which plugins load is decided in
:mod:`omejdn_pg.host.loader`, so plugins (the default file plugins
included) import this module without ever importing what loads them.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.settings.static import StaticConfiguration

log = logging.getLogger(__name__)

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

    def init(self, loader: EventBus) -> None: ...


_CREATE_EVENTS: Final = {
    USER_CREATE: ("user", "user_backend"),
    CLIENT_CREATE: ("client", "client_backend"),
}


_ADDRESSED_EVENTS: Final = {
    USER_UPDATE: ("user", "user"),
    USER_AUTHENTICATION_PASSWORD_CHANGE: ("user", "user"),
    USER_AUTHENTICATION_PASSWORD_VERIFY: ("user", "user"),
    CLIENT_UPDATE: ("client", "client"),
    CLIENT_AUTHENTICATION_CERTIFICATE_GET: ("client", "client"),
    CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE: ("client", "client"),
}
"""Events that act on the user or client in the context only if its ``backend`` is theirs."""
_KINDS: Final = {
    USER_CREATE: "creates",
    CLIENT_CREATE: "creates",
    USER_UPDATE: "updates",
    CLIENT_UPDATE: "updates",
    USER_AUTHENTICATION_PASSWORD_CHANGE: "password changes",
    USER_AUTHENTICATION_PASSWORD_VERIFY: "password checks",
    CLIENT_AUTHENTICATION_CERTIFICATE_GET: "certificate reads",
    CLIENT_AUTHENTICATION_CERTIFICATE_UPDATE: "certificate changes",
}


def _identity(subject: object) -> str:
    for name in ("username", "client_id"):
        value = getattr(subject, name, None)
        if isinstance(value, str):
            return value
    return "?"


class EventBus:
    """Registers handlers per event and fires events to all of them (Omejdn's PluginLoader)."""

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
        self._redirected: set[tuple[str, str | None, str]] = set()

    def register(self, event: str, handler: Handler) -> None:
        self._handlers[event].append(handler)

    def declare_backend(self, group: str, name: str) -> None:
        """Say that backend ``name`` now serves ``group`` (``user`` or ``client``)."""
        self.backends[group].add(name)

    def _knows_every_backend(self, group: str, event: str) -> bool:
        # A third-party plugin that handles the event without declaring its
        # backend name could be the one it is meant for: then no name can be
        # judged unknown.
        handlers = len(self.handlers(event))
        return handlers > 0 and handlers == len(self.backends[group])

    def check_backend_defaults(self) -> None:
        """Refuse a static ``*_backend_default`` that names no active backend.

        Otherwise every new user or client would be handed to nobody. A default
        the static file does not give is resolved at each create instead
        (:meth:`creating_backend`).
        """
        configuration = self.configuration
        for group, event, name in (
            ("user", USER_CREATE, configuration.user_backend_default),
            ("client", CLIENT_CREATE, configuration.client_backend_default),
        ):
            declared = self.backends[group]
            known = self._knows_every_backend(group, event)
            if name is not None and known and name not in declared:
                raise ConfigurationError(
                    f"{configuration.source}: '{group}_backend_default' is {name!r}, "
                    f"but no active {group} backend has that name; "
                    f"active: {', '.join(sorted(declared))}"
                )

    def creating_backend(self, group: str, name: str | None) -> str | None:
        """The backend a create addressed to ``name`` is stored by.

        A name no active backend has (Omejdn's admin API v2 hard-codes ``yaml``,
        v1 passes ``default``, a deployment may name none) goes to the sole
        active backend of the group — said once in the log — and is an error
        when several are active: a create is never silently dropped.
        """
        event = USER_CREATE if group == "user" else CLIENT_CREATE
        return self._route(group, name, event, f"a new {group} was addressed to")

    def addressed_backend(self, event: str, group: str, name: str | None, who: str) -> str | None:
        """The backend an update, password change or check of ``who`` (whose ``backend``
        is ``name``) acts in: the rule of :meth:`creating_backend`.

        Omejdn's admin API v1 builds the user or client from the request body
        (``User.from_h``), so its ``backend`` is ``'yaml'`` or none whatever
        backend holds it; with one active backend, that one is meant.
        """
        return self._route(group, name, event, f"{event}: {group} {who!r} names")

    def _route(self, group: str, name: str | None, event: str, what: str) -> str | None:
        declared = self.backends[group]
        if name in declared or not self._knows_every_backend(group, event):
            return name
        if len(declared) == 1:
            (only,) = declared
            kind = _KINDS.get(event, event)
            if (group, name, kind) not in self._redirected:
                self._redirected.add((group, name, kind))
                log.info(
                    "%s %s addressed to %r are %s by %r, the only active %s backend",
                    group,
                    kind,
                    name,
                    "stored" if kind == "creates" else "handled",
                    only,
                    group,
                )
            return only
        hint = (
            f" (set '{group}_backend_default' in the omejdn section or the plugin file)"
            if event in _CREATE_EVENTS
            else ""
        )
        raise ConfigurationError(
            f"{what} backend {name!r}, which is not active; "
            f"active {group} backends: {', '.join(sorted(declared))}{hint}"
        )

    def handlers(self, event: str) -> tuple[Handler, ...]:
        return tuple(self._handlers.get(event, ()))

    def fire(self, event: str, **context: Any) -> list[Any]:
        """Every handler's answer to ``event``, in registration order."""
        create = _CREATE_EVENTS.get(event)
        if create is not None:
            group, key = create
            context[key] = self.creating_backend(group, context.get(key))
        addressed = _ADDRESSED_EVENTS.get(event)
        if addressed is not None:
            group, key = addressed
            subject = context.get(key)
            name = getattr(subject, "backend", None)
            routed = self.addressed_backend(event, group, name, _identity(subject))
            if routed != name and subject is not None:
                # The object now names where it lives, as after a create.
                subject.backend = routed
        return [handler(**context) for handler in self._handlers.get(event, ())]

    def close(self) -> None:
        """Release what the plugins hold (connection pools)."""
        for plugin in self.plugins.values():
            close = getattr(plugin, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> EventBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
