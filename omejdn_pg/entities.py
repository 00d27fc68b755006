"""The domain objects Omejdn's events carry: User, Client, and (from
:mod:`omejdn_pg.keys`, re-exported here) Key, KeySet, KeyMaterial.

Plain dataclasses, free of SQLAlchemy, so the host and the handlers never hold
a live ORM object (no session can leak out, no lazy load can surprise). Their
``from_dict``/``to_dict`` speak Omejdn's YAML form, which is also what the
file-based default plugins and the import/export commands read and write.

Attributes are accepted as a mapping (Omejdn 2) or as a list of
``{key, value}`` (older files) and are always kept as a mapping: the Ruby
plugin's habit of returning the list form is what made an update of a read
user destroy its attributes.

The key names are re-exported lazily and the password hasher is imported by
``User.from_dict`` alone: a reader that only carries users and clients
(``omejdn-pg users list``) does not load cryptography and the hashing
libraries, which cost more than the listing's whole first page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omejdn_pg.errors import InvalidValue, PasswordRejected, located
from omejdn_pg.keys import PUBLIC as KEY_MODULES
from omejdn_pg.lazy import lazy_names

if TYPE_CHECKING:
    # The key vocabulary lives in omejdn_pg.keys/; these names were defined here
    # before it existed and stay importable from here (see __getattr__).
    from omejdn_pg.keys.algorithms import PrivateKey as PrivateKey
    from omejdn_pg.keys.algorithms import PublicKey as PublicKey
    from omejdn_pg.keys.jwk import jwk_thumbprint as jwk_thumbprint
    from omejdn_pg.keys.key_set import KeySet as KeySet
    from omejdn_pg.keys.material import KeyMaterial as KeyMaterial
    from omejdn_pg.keys.model import Key as Key
    from omejdn_pg.keys.pem import CHAIN_SEPARATOR as CHAIN_SEPARATOR
    from omejdn_pg.keys.pem import load_certificate_chain as load_certificate_chain
    from omejdn_pg.keys.pem import load_key_pem as load_key_pem

_KEY_NAMES = frozenset(
    {
        "CHAIN_SEPARATOR",
        "Key",
        "KeyMaterial",
        "KeySet",
        "PrivateKey",
        "PublicKey",
        "jwk_thumbprint",
        "load_certificate_chain",
        "load_key_pem",
    }
)
"""The names of :mod:`omejdn_pg.keys` that stay importable from here."""


__getattr__, __dir__ = lazy_names(globals(), {name: KEY_MODULES[name] for name in _KEY_NAMES})


def normalize_attributes(attributes: object, owner: str = "attributes") -> dict[str, Any]:
    """Attributes as a mapping, from a mapping or a list of ``{key, value}``."""
    if attributes is None:
        return {}
    if isinstance(attributes, Mapping):
        result = dict(attributes)
    elif isinstance(attributes, list):
        result = {}
        for index, item in enumerate(attributes):
            if not isinstance(item, Mapping) or "key" not in item:
                raise InvalidValue(f"{owner}[{index}] must be a mapping with 'key' and 'value'")
            result[item["key"]] = item.get("value")
    else:
        raise InvalidValue(
            f"{owner} must be a mapping or a list of {{key, value}}, "
            f"got {type(attributes).__name__}"
        )
    for key in result:
        if not isinstance(key, str):
            raise InvalidValue(f"{owner}: attribute names must be strings, got {key!r}")
    return result


@dataclass
class User:
    username: str
    password: str | None = None
    """A hash in modular crypt format (never plaintext), or None (e.g. external users)."""
    attributes: dict[str, Any] = field(default_factory=dict)
    extern: str | bool | None = None
    """The issuer that vouches for an external user, or True (Omejdn's federation sets
    either); stored as TEXT, True as ``'true'``."""
    consent: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None

    def __repr__(self) -> str:
        hidden = "None" if self.password is None else "'<hash>'"
        return (
            f"User(username={self.username!r}, password={hidden}, "
            f"attributes={self.attributes!r}, extern={self.extern!r}, "
            f"consent={self.consent!r}, backend={self.backend!r})"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, backend: str | None = None) -> User:
        """A user from Omejdn's YAML form; a plaintext password is hashed on the way in."""
        username = data.get("username")
        if not isinstance(username, str) or not username:
            raise InvalidValue(f"a user needs a non-empty string 'username', got {username!r}")
        password = data.get("password")
        if password is not None and not isinstance(password, str):
            raise InvalidValue(f"user {username!r}: 'password' must be a string")
        extern = data.get("extern")
        if extern is False:
            extern = None
        if extern is not None and extern is not True and not isinstance(extern, str):
            raise InvalidValue(f"user {username!r}: 'extern' must be an issuer (string) or true")
        consent = data.get("consent") or {}
        if not isinstance(consent, Mapping):
            raise InvalidValue(f"user {username!r}: 'consent' must be a mapping")
        from omejdn_pg import passwords

        with located(f"user {username!r}", PasswordRejected):
            password_hash = passwords.string_to_pass_hash(password) if password else None
        return cls(
            username=username,
            password=password_hash,
            attributes=normalize_attributes(
                data.get("attributes"), f"user {username!r}: attributes"
            ),
            extern=extern,
            consent=dict(consent),
            backend=backend if backend is not None else data.get("backend"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Omejdn's YAML form (without ``backend``, which is where it lives, not what it is)."""
        result: dict[str, Any] = {"username": self.username}
        if self.password is not None:
            result["password"] = self.password
        result["attributes"] = dict(self.attributes)
        if self.extern is not None:
            result["extern"] = self.extern
        if self.consent:
            result["consent"] = dict(self.consent)
        return result


@dataclass
class Client:
    metadata: dict[str, Any]
    """RFC 7591 client metadata, ``client_id`` included; never ``backend``."""
    attributes: dict[str, Any] = field(default_factory=dict)
    backend: str | None = None

    def __post_init__(self) -> None:
        client_id = self.metadata.get("client_id")
        if not isinstance(client_id, str) or not client_id:
            raise InvalidValue(f"a client needs a non-empty string 'client_id', got {client_id!r}")

    def __repr__(self) -> str:
        shown = {
            k: ("<secret>" if k == "client_secret" and v is not None else v)
            for k, v in self.metadata.items()
        }
        return (
            f"Client(metadata={shown!r}, attributes={self.attributes!r}, backend={self.backend!r})"
        )

    @property
    def client_id(self) -> str:
        client_id: str = self.metadata["client_id"]
        return client_id

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, backend: str | None = None) -> Client:
        """A client from Omejdn's YAML form: metadata fields plus ``attributes``."""
        metadata = {k: v for k, v in data.items() if k not in ("attributes", "backend")}
        client_id = metadata.get("client_id")
        return cls(
            metadata=metadata,
            attributes=normalize_attributes(
                data.get("attributes"), f"client {client_id!r}: attributes"
            ),
            backend=backend if backend is not None else data.get("backend"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.metadata, "attributes": dict(self.attributes)}


def users_from_dicts(items: Iterable[Mapping[str, Any]], backend: str | None = None) -> list[User]:
    return [User.from_dict(item, backend=backend) for item in items]


def clients_from_dicts(
    items: Sequence[Mapping[str, Any]], backend: str | None = None
) -> list[Client]:
    return [Client.from_dict(item, backend=backend) for item in items]
