"""A users.yml written as JSON is read by the JSON parser: always to what YAML reads.

``json_form`` must never change what a file means, so every case is checked
against the YAML loader itself: generated JSON documents (one line, or a block
list of one JSON value per line, as scripts write a users.yml) in every
spelling JSON allows, mutated to hit each difference between the two
languages. Where the fast path takes a text, YAML must read the same value,
types included (``True`` is not ``1``, ``1e5`` is a string in YAML 1.1).
These tests need no database.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from omejdn_pg.errors import InvalidValue
from omejdn_pg.yamlio import json_form, load_yaml

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
NOT_JSON = json_form("not json")
FILE = Path("users.yml")


def same(left: Any, right: Any) -> bool:
    """Equal values of equal types, all the way down (``==`` says ``True == 1``)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, float) and math.isnan(left):
        return math.isnan(right)
    return bool(left == right)


def yaml_reads(text: str) -> tuple[bool, Any]:
    try:
        return True, yaml.load(text, Loader=LOADER)
    except yaml.YAMLError:
        return False, None


KEYS = st.one_of(
    st.sampled_from(["username", "password", "<<", "=", "", "a b", "x:y", "#c", "~", "yes"]),
    st.text(max_size=12),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\u0085", "\u2028", "\ufeff", "\t", "\r", "\\", "/", "\U0001f600", "null"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)


def spelled(value: Any, ensure_ascii: bool, compact: bool) -> str:
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(value, ensure_ascii=ensure_ascii, separators=separators)


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    ensure_ascii, compact = draw(st.booleans()), draw(st.booleans())
    if draw(st.booleans()):
        entries = draw(st.lists(st.dictionaries(KEYS, VALUES, max_size=5), max_size=4))
        lines = [f"- {spelled(entry, ensure_ascii, compact)}" for entry in entries]
        text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", " \n"]))
    else:
        value = draw(st.one_of(st.lists(VALUES, max_size=4), st.dictionaries(KEYS, VALUES)))
        text = spelled(value, ensure_ascii, compact) + draw(st.sampled_from(["\n", "", "  "]))
    # Spellings JSON allows and a writer may use: escaped slashes, number forms
    # YAML 1.1 reads as strings, constants, surrogate-pair escapes, long keys.
    edit = draw(
        st.sampled_from(
            [
                None,
                ("/", "\\/"),
                (": 1.0", ": 1e5"),
                (":1.0", ":1.5E+3"),
                (": 0", ": -0"),
                ("null", "NaN"),
                ("true", "Infinity"),
                ('"a"', '"\\ud83d\\ude00"'),
                ('"a"', '"' + "k" * 1100 + '"'),
                (": ", ":\t"),
                (", ", ",\r\n"),
            ]
        )
    )
    if edit is not None:
        text = text.replace(*edit)
    return text


@settings(max_examples=1500, deadline=None)
@given(json_texts())
@example('[{"a": 1e5, "b": 1.5e3, "c": 1.5e+3, "d": 1.0, "e": -0.0, "f": 10}]\n')
@example('- {"username": "u", "password": "$2b$04$x/y", "attributes": {"k": [1, 2]}}\n')
@example('{"a":{"b":[true,false,null]},"url":"http://x/\\/y"}')
@example('- {"a": "\\ud83d\\ude00"}\n- {"b": "\\u00e9\\u0000"}\n')
@example('{"' + "k" * 1100 + '": 1}')
@example('{"a"' + " " * 1100 + ": 1}")
@example("- [1, 2]\n- {}\n")
@example('- {"a": 1}, {"b": 2}\n')
@example('- {"a": 1}   \n- [2] \n')
@example('- {"a": 1} #\n- {"b": 2}\n')
@example('- {"a": 1}\n-  {"b": 2}\n')
@example("[1, NaN, Infinity]")
@example("\ufeff[1]")
def test_json_is_read_as_yaml_reads_it(text: str) -> None:
    fast = json_form(text)
    readable, expected = yaml_reads(text)
    if fast is not NOT_JSON:
        assert readable, text
        assert same(fast, expected), (text, fast, expected)
    if readable:
        assert same(load_yaml(text, FILE), expected)
    else:
        with pytest.raises(InvalidValue, match=r"users\.yml"):
            load_yaml(text, FILE)


def test_what_generators_write_takes_the_fast_path() -> None:
    users = [{"username": f"u{i}", "attributes": {"n": i}} for i in range(3)]
    lines = "".join(f"- {json.dumps(user)}\n" for user in users)

    assert json_form(lines) == users
    assert json_form(json.dumps(users)) == users
    assert json_form(json.dumps(users, indent=2)) is NOT_JSON  # several lines: YAML's
    assert json_form("- username: u0\n") is NOT_JSON
