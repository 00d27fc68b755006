"""What the read cache hands out: an equal, independent copy on every hit.

The copies share strings and numbers and rebuild every container, so these
properties are about the containers: whatever a caller does to one answer,
or to the value it filled the cache with, the next answer is what was filled.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from omejdn_pg import Client, User
from omejdn_pg.postgres.cache.copies import freeze
from tests.kits.strategies import json_values, names, texts


def vandalise(value: Any) -> None:
    """Change every container inside ``value`` in place, however deep."""
    if isinstance(value, dict):
        for inner in list(value.values()):
            vandalise(inner)
        value["vandalised"] = True
    elif isinstance(value, list):
        for inner in value:
            vandalise(inner)
        value.append("vandalised")


@given(value=json_values)
def test_each_copy_equals_the_filled_value_whatever_was_done_to_others(value: Any) -> None:
    snapshot = copy.deepcopy(value)
    copier = freeze(value)
    vandalise(value)  # the caller keeps and changes what it filled the cache with
    first = copier()
    assert first == snapshot
    vandalise(first)
    assert copier() == snapshot
    if isinstance(snapshot, dict | list):
        assert copier() is not copier()


@given(
    username=names,
    attributes=st.dictionaries(texts, json_values, max_size=5),
    consent=st.dictionaries(texts, json_values, max_size=3),
    extern=st.none() | st.just(True) | texts,
)
def test_a_cached_user_is_a_user_equal_to_the_one_filled(
    username: str, attributes: dict[str, Any], consent: dict[str, Any], extern: Any
) -> None:
    user = User(
        username=username,
        password="$2b$04$hash",
        attributes=attributes,
        extern=extern,
        consent=consent,
        backend="postgres",
    )
    snapshot = copy.deepcopy(user)
    copier = freeze(user)
    vandalise(user.attributes)
    user.password = None
    served = copier()
    assert type(served) is User
    assert served == snapshot
    vandalise(served.attributes)
    vandalise(served.consent)
    assert copier() == snapshot


def test_a_client_with_nested_metadata_is_copied_whole() -> None:
    client = Client(
        metadata={
            "client_id": "app",
            "redirect_uris": ["https://app/cb"],
            "jwks": {"keys": [{"kty": "EC", "x5c": ["MIIB"]}]},
        },
        attributes={"roles": {"admin": ["read"]}},
        backend="postgres",
    )
    snapshot = copy.deepcopy(client)
    copier = freeze(client)
    served = copier()
    served.metadata["jwks"]["keys"][0]["x5c"].append("forged")
    served.attributes["roles"]["admin"].append("write")
    assert copier() == snapshot
    assert type(copier()) is Client


def test_values_beyond_json_are_copied_too() -> None:
    """Tuples, sets and other objects take the slower way (pickle), not a shared object."""
    value = {"pair": (1, [2, 3]), "set": {4, 5}, "nested": [{"a": b"bytes"}]}
    copier = freeze(value)
    served = copier()
    served["pair"][1].append("changed")
    served["set"].add(6)
    served["nested"][0]["a"] = None
    assert copier() == {"pair": (1, [2, 3]), "set": {4, 5}, "nested": [{"a": b"bytes"}]}
