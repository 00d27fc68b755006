"""Omejdn's storage events as the service answers them: params in, the one value out.

Each event is fired through the host's loader — the same handler adapters,
routing, cache and password policy as the Python API — and its answers are
reduced the way Omejdn's core reduces them (``lib/*.rb`` at 3126324), so the
Ruby plugin can return the result as it is: the first answer for
CONFIGURATION_LOAD, KEYS_LOAD and KEYS_LOAD_ALL, the first non-null for the
GETs, the flattened lists for the GET_ALLs, ``compact.first`` for a password
check. Users and clients travel in the shapes of ``User#to_h`` and
``Client#to_h``; a client always carries ``jwks`` (``{"keys": []}`` when it
has none), as the core's default client store attaches it, and never
``backend``.

The trade-off: a thin mapping with no state of its own, so nothing here can
disagree with the Python API — but also nothing here can answer faster than
it; what may be kept on the Ruby side is decided by the ``watch`` stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from omejdn_pg.bridge.protocol import INVALID_PARAMS, METHOD_NOT_FOUND, ProtocolError
from omejdn_pg.entities import Client, User
from omejdn_pg.host import events
from omejdn_pg.service.host import Host

Params = dict[str, Any]
Answer = Callable[[Host, Params], Any]


def _text(params: Params, name: str, method: str, *, optional: bool = False) -> Any:
    value = params.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(INVALID_PARAMS, f"{method}: '{name}' must be a string")
    return value


def _object(params: Params, name: str, method: str) -> dict[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise ProtocolError(INVALID_PARAMS, f"{method}: '{name}' must be an object")
    return value


def user_to_h(user: User) -> dict[str, Any]:
    """``User#to_h``: username, attributes, password (the hash), extern, backend, consent,
    without the nil ones."""
    found = {
        "username": user.username,
        "attributes": dict(user.attributes),
        "password": user.password,
        "extern": user.extern,
        "backend": user.backend,
        "consent": dict(user.consent),
    }
    return {key: value for key, value in found.items() if value is not None}


def client_to_h(host: Host, client: Client) -> dict[str, Any]:
    """``Client#to_h`` with ``jwks`` attached as the core's default client store does."""
    found = {"attributes": dict(client.attributes), **client.metadata}
    if _jwks_mode(host):
        # A client without keys: the default store's answer, ``JWT::JWK::Set.new.export``.
        found.setdefault("jwks", {"keys": []})
    return found


def _jwks_mode(host: Host) -> bool:
    return host.postgres is None or host.postgres.jwks


def _user(params: Params, method: str) -> User:
    return User.from_dict(_object(params, "user", method))


def _client(params: Params, method: str) -> Client:
    return Client.from_dict(_object(params, "client", method))


def _first(answers: list[Any]) -> Any:
    return next((answer for answer in answers if answer is not None), None)


def user_get(host: Host, params: Params) -> Any:
    username = _text(params, "username", events.USER_GET, optional=True)
    if username is None:
        return None
    found = _first(host.loader.fire(events.USER_GET, username=username))
    return user_to_h(found) if found is not None else None


def user_get_all(host: Host, params: Params) -> Any:
    answers = host.loader.fire(events.USER_GET_ALL)
    return [user_to_h(user) for answer in answers for user in answer or ()]


def user_create(host: Host, params: Params) -> None:
    backend = _text(params, "user_backend", events.USER_CREATE, optional=True)
    host.loader.fire(
        events.USER_CREATE, user=_user(params, events.USER_CREATE), user_backend=backend
    )


def user_update(host: Host, params: Params) -> None:
    host.loader.fire(events.USER_UPDATE, user=_user(params, events.USER_UPDATE))


def user_delete(host: Host, params: Params) -> None:
    username = _text(params, "username", events.USER_DELETE)
    host.loader.fire(events.USER_DELETE, username=username)


def password_change(host: Host, params: Params) -> None:
    method = events.USER_AUTHENTICATION_PASSWORD_CHANGE
    password = _text(params, "password", method)
    host.loader.fire(method, user=_user(params, method), password=password)


def password_verify(host: Host, params: Params) -> Any:
    method = events.USER_AUTHENTICATION_PASSWORD_VERIFY
    password = _text(params, "password", method)
    return _first(host.loader.fire(method, user=_user(params, method), password=password))


def client_get(host: Host, params: Params) -> Any:
    # The core fires CLIENT_GET with a nil client_id (a token request without one).
    client_id = _text(params, "client_id", events.CLIENT_GET, optional=True)
    if client_id is None:
        return None
    found = _first(host.loader.fire(events.CLIENT_GET, client_id=client_id))
    return client_to_h(host, found) if found is not None else None


def client_get_all(host: Host, params: Params) -> Any:
    answers = host.loader.fire(events.CLIENT_GET_ALL)
    return [client_to_h(host, client) for answer in answers for client in answer or ()]


def client_create(host: Host, params: Params) -> None:
    backend = _text(params, "client_backend", events.CLIENT_CREATE, optional=True)
    host.loader.fire(
        events.CLIENT_CREATE, client=_client(params, events.CLIENT_CREATE), client_backend=backend
    )


def client_update(host: Host, params: Params) -> None:
    host.loader.fire(events.CLIENT_UPDATE, client=_client(params, events.CLIENT_UPDATE))


def client_delete(host: Host, params: Params) -> None:
    client_id = _text(params, "client_id", events.CLIENT_DELETE)
    host.loader.fire(events.CLIENT_DELETE, client_id=client_id)


def configuration_store(host: Host, params: Params) -> None:
    section = _text(params, "section", events.CONFIGURATION_STORE)
    if "data" not in params:
        raise ProtocolError(INVALID_PARAMS, f"{events.CONFIGURATION_STORE}: 'data' is missing")
    host.loader.fire(events.CONFIGURATION_STORE, section=section, data=params["data"])


def configuration_load(host: Host, params: Params) -> Any:
    section = _text(params, "section", events.CONFIGURATION_LOAD)
    answers = host.loader.fire(
        events.CONFIGURATION_LOAD, section=section, fallback=params.get("fallback")
    )
    return answers[0] if answers else None


def keys_store(host: Host, params: Params) -> None:
    target_type = _text(params, "target_type", events.KEYS_STORE)
    target = _text(params, "target", events.KEYS_STORE)
    jwks = _object(params, "jwks", events.KEYS_STORE)
    host.loader.fire(events.KEYS_STORE, target_type=target_type, target=target, jwks=jwks)


def keys_load(host: Host, params: Params) -> Any:
    target_type = _text(params, "target_type", events.KEYS_LOAD)
    target = _text(params, "target", events.KEYS_LOAD)
    # ``create`` is the core's to act on: it generates the key when the answer is empty.
    answers = host.loader.fire(
        events.KEYS_LOAD, target_type=target_type, target=target, create=bool(params.get("create"))
    )
    return answers[0] if answers else None


def keys_load_all(host: Host, params: Params) -> Any:
    target_type = _text(params, "target_type", events.KEYS_LOAD_ALL)
    answers = host.loader.fire(events.KEYS_LOAD_ALL, target_type=target_type)
    return answers[0] if answers else None


EVENTS: Final[dict[str, Answer]] = {
    events.USER_GET: user_get,
    events.USER_GET_ALL: user_get_all,
    events.USER_CREATE: user_create,
    events.USER_UPDATE: user_update,
    events.USER_DELETE: user_delete,
    events.USER_AUTHENTICATION_PASSWORD_CHANGE: password_change,
    events.USER_AUTHENTICATION_PASSWORD_VERIFY: password_verify,
    events.CLIENT_GET: client_get,
    events.CLIENT_GET_ALL: client_get_all,
    events.CLIENT_CREATE: client_create,
    events.CLIENT_UPDATE: client_update,
    events.CLIENT_DELETE: client_delete,
    events.CONFIGURATION_STORE: configuration_store,
    events.CONFIGURATION_LOAD: configuration_load,
    events.KEYS_STORE: keys_store,
    events.KEYS_LOAD: keys_load,
    events.KEYS_LOAD_ALL: keys_load_all,
}
"""Every storage event of Omejdn's current core, by name."""


def answer(host: Host, method: str, params: Params) -> Any:
    """The one value the Ruby listener returns for event ``method``."""
    handler = EVENTS.get(method)
    if handler is None:
        raise ProtocolError(METHOD_NOT_FOUND, f"unknown method {method!r}")
    return handler(host, params)
