"""What differs between a deployment and the store: keys, certificates, where new records go.

Keys compare by kid, public key, descriptor (``use``, ``alg``, the chain and
every other parameter, defaults filled in) and private key: a directory key
with its private key differs from a stored key without one; a directory key
without its private key never differs for that reason alone, because storing
it would keep the stored private key anyway. KEYS_LOAD gives next and retired
keys without their private key, so whether PostgreSQL holds one is asked of
the Host's key lifecycle (:meth:`~omejdn_pg.service.host.Keys.stored`), which
opens sealed keys with the backend's keyring like every other key read. A key
whose certificate is not valid now is refused, naming its file, before
anything is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from omejdn_pg.errors import InvalidKeyMaterial
from omejdn_pg.host.files.store import CLIENT_KEYS
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.service.host import Host


def _public_forms(keys: Iterable[Key]) -> dict[str, str]:
    """kid -> the key's public JWK (descriptor defaults filled in, chain included)."""
    return {key.kid: json.dumps(key.to_jwk(private=False), sort_keys=True) for key in keys}


def keys_differ(
    stored: KeySet, wanted: KeySet, hidden_private: Callable[[], set[str]] | None = None
) -> bool:
    """Whether storing ``wanted`` would change ``stored`` (see the module docstring).

    ``hidden_private`` names the kids whose private key is stored although
    ``stored`` came without it (asked only when it matters).
    """
    if _public_forms(stored) != _public_forms(wanted):
        return True
    held = {key.kid for key in stored if key.is_private}
    missing = {key.kid for key in wanted if key.is_private} - held
    if missing and hidden_private is not None:
        missing -= hidden_private()
    return bool(missing)


def hidden_private(host: Host, target_type: str, target: str) -> Callable[[], set[str]]:
    """Kids of the target whose private key PostgreSQL holds, though KEYS_LOAD gives
    next and retired keys without it (so that importing them again is no change)."""

    def ask() -> set[str]:
        if not host.keys.kept_in_postgres:
            return set()
        # As every key read of the Host: with key_encryption on, stored private keys
        # are sealed and only the backend's keyring opens them.
        return {key.kid for key in host.keys.stored(target_type, target) if key.is_private}

    return ask


def check_certificates(
    target_type: str,
    target: str,
    stored: KeySet,
    wanted: KeySet,
    files: Mapping[tuple[str, str, str], Path],
    where: str,
) -> None:
    """Refuse, naming the file, a new signing key whose certificate is not valid now:
    the storage would refuse to publish it (only in the middle of the import). A
    client's key is the client's registration: the storage keeps it with a warning."""
    if target_type == CLIENT_KEYS:
        return
    for key in wanted:
        old = stored.by_kid(key.kid)
        if old is not None and old.same_key(key):
            continue
        problem = key.certificate_problem()
        if problem is not None:
            shown = files.get((target_type, target, key.kid), where)
            raise InvalidKeyMaterial(
                f"{shown}: key {key.kid!r} of {target_type}/{target}: {problem}; "
                "renew the certificate or remove the key"
            )


def creating_backend(host: Host, group: str) -> Callable[[], str | None]:
    """Where new users (or clients) go, resolved once per import: the Host would read
    ``<group>_backend_default`` from the ``omejdn`` section again for every create — a
    statement each, inside the import's transaction. Users and clients are applied
    before any section, so each create would have read the same answer."""
    resolved: list[str | None] = []

    def backend() -> str | None:
        if not resolved:
            default = (host.users if group == "user" else host.clients).backend_default
            resolved.append(host.loader.creating_backend(group, default))
        return resolved[0]

    return backend
