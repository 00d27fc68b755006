"""A :class:`KeySet`: the keys of one target, kids unique, bounded in size, to and from a JWK Set.

A sequence of :class:`~omejdn_pg.keys.model.Key` rather than a dict by kid:
the order is what Omejdn's core sees (it signs with the first private signing
key), and the duplicate-kid check is made once, here. Sets above
:attr:`KeySet.MAX_KEYS` keys are refused before any key is parsed, so that a
hostile JWK Set cannot pin a CPU with private-key validations.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, overload

from omejdn_pg.errors import InvalidKeyMaterial
from omejdn_pg.keys.model import Key


class KeySet(Sequence[Key]):
    """The keys of one target (or of all targets of a type), kids unique."""

    MAX_KEYS: Final = 100
    """A larger set is refused: each key may cost a private-key validation."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self.keys: list[Key] = list(keys)
        if len(self.keys) > self.MAX_KEYS:
            raise InvalidKeyMaterial(
                f"a key set holds at most {self.MAX_KEYS} keys, got {len(self.keys)}"
            )
        seen: set[str] = set()
        for index, key in enumerate(self.keys):
            if not isinstance(key, Key):
                raise InvalidKeyMaterial(f"keys[{index}]: expected a Key, got {type(key).__name__}")
            if key.kid in seen:
                raise InvalidKeyMaterial(f"keys[{index}]: duplicate kid {key.kid!r}")
            seen.add(key.kid)

    @classmethod
    def from_jwks(
        cls, jwks: Mapping[str, Any] | Sequence[Any] | None, *, what: str = "JWK Set"
    ) -> KeySet:
        """Keys from ``{"keys": [...]}`` or a bare list of JWKs; None or ``{}`` is empty.

        Other members of the set are ignored, as RFC 7517 §5 asks.
        """
        if jwks is None:
            return cls()
        if isinstance(jwks, Mapping):
            if "keys" not in jwks:
                if jwks:
                    raise InvalidKeyMaterial(f"{what}: 'keys' is missing")
                return cls()
            items = jwks["keys"]
            if not isinstance(items, list | tuple):
                raise InvalidKeyMaterial(
                    f"{what}: 'keys' must be a list, got {type(items).__name__}"
                )
        elif isinstance(jwks, list | tuple):
            items = jwks
        else:
            raise InvalidKeyMaterial(
                f"{what}: must be a JSON object with 'keys' or a list of JWKs, "
                f"got {type(jwks).__name__}"
            )
        if len(items) > cls.MAX_KEYS:
            raise InvalidKeyMaterial(
                f"{what}: {len(items)} keys, more than the {cls.MAX_KEYS} a set may hold"
            )
        keys: list[Key] = []
        first_index: dict[str, int] = {}
        for index, item in enumerate(items):
            key = Key.from_jwk(item, what=f"{what}: keys[{index}]")
            if key.kid in first_index:
                raise InvalidKeyMaterial(
                    f"{what}: keys[{index}]: duplicate kid {key.kid!r} "
                    f"(also keys[{first_index[key.kid]}])"
                )
            first_index[key.kid] = index
            keys.append(key)
        return cls(keys)

    def to_jwks(self, *, private: bool = True) -> dict[str, Any]:
        return {"keys": [key.to_jwk(private=private) for key in self.keys]}

    def by_kid(self, kid: str) -> Key | None:
        return next((key for key in self.keys if key.kid == kid), None)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)

    @overload
    def __getitem__(self, index: int) -> Key: ...
    @overload
    def __getitem__(self, index: slice) -> KeySet: ...
    def __getitem__(self, index: int | slice) -> Key | KeySet:
        if isinstance(index, slice):
            return KeySet(self.keys[index])
        return self.keys[index]

    def __repr__(self) -> str:
        return f"KeySet({self.keys!r})"
