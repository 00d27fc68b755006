"""The client metadata fields Omejdn reads, checked against what it does with them.

Omejdn (``lib/client.rb``, ``omejdn.rb``, ``lib/oauth_helper.rb``) reads a
handful of a client's metadata fields; a wrong type there is no error until a
login, and then a confusing one (``redirect_uris: 5`` matches nothing,
``scope: 42`` grants nothing, ``grant_types: implicit`` names a grant Omejdn
does not serve). Those fields are checked on every write — the events of
either store, the CLI, an import — with one message per wrong field, all of
them at once. Every other field is stored as given (RFC 7591 lets a client
carry any extension metadata).

The rules follow RFC 7591 where Omejdn does: lists of strings, absolute URIs
for the URIs, registered grant types and authentication methods. Where
Omejdn is laxer than the RFC the lax form is kept: Omejdn reads the list
fields with Ruby's ``[*value]``, so one string stands for a one-element list,
and its own quick start writes ``redirect_uris: https://...`` and
``scope: openid`` so. A JSON null is Omejdn's "absent" and passes too (a
client written by the Ruby plugin may hold one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from omejdn_pg.errors import InvalidValue

AUTH_METHODS: Final = (
    "none",
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    "tls_client_auth",
    "self_signed_tls_client_auth",
)
"""``token_endpoint_auth_method``: the IANA registry's methods (RFC 7591, RFC 8705).
Omejdn's core serves the first five but ``client_secret_jwt``; a plugin may serve the rest."""
GRANT_TYPES: Final = (
    "authorization_code",
    "client_credentials",
    "refresh_token",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:saml2-bearer",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:token-exchange",
)
"""Registered grant types; not ``implicit`` nor ``password``, which Omejdn does not serve
and the OAuth 2.0 security best practice (RFC 9700) retires."""
_ABSOLUTE_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]+")
"""RFC 3986's scheme, then anything without whitespace or control characters."""


def _string(value: object) -> str | None:
    return None if isinstance(value, str) else f"must be a string, got {_shown(value)}"


def _one_of(allowed: tuple[str, ...]) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, got {_shown(value)}"
        if value not in allowed:
            return f"{value!r} is not one of {', '.join(allowed)}"
        return None

    return check


def _uri(value: str, *, no_fragment: str = "") -> str | None:
    """``no_fragment``: the RFC that forbids a fragment here, if one does."""
    if _ABSOLUTE_URI.fullmatch(value) is None:
        return f"{value!r} is not an absolute URI"
    if no_fragment and "#" in value:
        return f"{value!r} has a fragment, which {no_fragment} forbids"
    return None


def _absolute_uri(value: object) -> str | None:
    return _string(value) or _uri(str(value))


def _strings(
    item: Callable[[str], str | None] | None = None,
) -> Callable[[object], str | None]:
    """A list of strings (or one string, as Omejdn reads it), each passing ``item``."""

    def check(value: object) -> str | None:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            return f"must be a list of strings, got {_shown(value)}"
        for text in values:
            problem = item(text) if item is not None else None
            if problem is not None:
                return problem
        return None

    return check


def _grant(value: str) -> str | None:
    if value not in GRANT_TYPES:
        return f"{value!r} is not one of {', '.join(GRANT_TYPES)}"
    return None


def _scope(value: str) -> str | None:
    if not value or any(c.isspace() for c in value):
        return (
            f"{value!r} is not one scope; Omejdn reads a list of scopes "
            "(scope: [openid, profile]), not RFC 7591's space-separated string"
        )
    return None


def _redirect(value: str) -> str | None:
    return _uri(value, no_fragment="RFC 6749")


def _resource(value: str) -> str | None:
    return _uri(value, no_fragment="RFC 8707")


def _secret(value: object) -> str | None:
    # Never the value: a secret of the wrong type is a secret all the same.
    return None if isinstance(value, str) else f"must be a string, got type {type(value).__name__}"


FIELDS: Final[Mapping[str, Callable[[object], str | None]]] = {
    "client_secret": _secret,
    "client_name": _string,
    "token_endpoint_auth_method": _one_of(AUTH_METHODS),
    "grant_types": _strings(_grant),
    "redirect_uris": _strings(_redirect),
    "post_logout_redirect_uris": _strings(_redirect),
    "request_uris": _strings(_uri),
    "scope": _strings(_scope),
    "resource": _strings(_resource),
    "jwks_uri": _absolute_uri,
}
"""Each field Omejdn reads (``jwks`` is a key set, checked as one; ``client_id`` by the
stores) and its check."""


def metadata_problems(metadata: Mapping[str, Any]) -> list[str]:
    """One message per field of ``metadata`` that Omejdn would misread, in field order."""
    problems = []
    for field, value in metadata.items():
        check = FIELDS.get(field)
        if check is None or value is None:
            continue
        problem = check(value)
        if problem is not None:
            problems.append(f"{field}: {problem}")
    return problems


def check_client_metadata(metadata: Mapping[str, Any], who: str) -> None:
    """InvalidValue naming ``who`` and every wrong field, if there is one."""
    problems = metadata_problems(metadata)
    if problems:
        raise InvalidValue(f"{who}: " + "; ".join(problems))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"
