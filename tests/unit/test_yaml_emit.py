"""The YAML writer for JSON-shaped data: every text reads back as the very data written.

Checked against the readers of what the package writes — PyYAML's C loader
(libyaml) and its pure-Python one, and Ruby's Psych, which reads Omejdn's
``users.yml`` and ``clients.yml`` — on generated documents whose strings lean
on every rule YAML and Psych read plain scalars by (``yes``, ``~``, ``1e3``,
``12:30``, ``2001-12-14``, ``<<``, ``: ``, `` #``, control characters, line
separators, non-BMP characters), types included: ``"1"`` stays a string,
``1`` an integer, ``True`` a boolean. Typical records come out as the very
text PyYAML wrote before. No database.
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
from typing import Any

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from omejdn_pg.yaml_emit import NotJsonShaped, emit, is_plain
from omejdn_pg.yamlio import dump_yaml, yaml_dumper
from tests.cluster.ruby.harness import ruby

LOADERS = (yaml.CSafeLoader, yaml.SafeLoader)
ADVERSARIAL = [
    *("yes", "Yes", "YES", "yEs", "No", "no", "on", "On", "OFF", "oFf", "y", "n", "Y", "N"),
    *("true", "False", "TRUE", "tRUE", "~", "null", "Null", "NULL", "nULL", "", " ", "  "),
    *(" x", "x ", "a: b", "a:", "a:b", "a #b", "a#b", "#a", "- x", "-", "-x", "--", "---"),
    *("--- x", "...", "... x", "? x", "?", "?x", ": x", ":", ":x", ":sym", "@x", "`x", "!x"),
    *("!!str x", "&x", "*x", "%x", "|", ">", "|-", "'", "''", '"', "\\", "\\n", "\t", "\n"),
    *("x\n", "\nx", "a\tb", " \n ", "\r", "\r\n", "\x85", "\u2028", "\u2029", "a\u2028 b"),
    *("\ufeff", "\ufeffx", "\ufffe", "\uffff", "\x7f", "\x9b", "\x00", "\x1b[31m", "\x07"),
    *("1", "-1", "+1", "0", "00", "012", "089", "1.0", "1.", ".5", "-.5", "+.5", ".", "1e3"),
    *("1.0e+3", "1e+3", "6.8523015e+5", "685.230_15e+03", "0x1F", "0X1f", "0o17", "0b101"),
    *("1_000", "1,000", "1,5", "12:30", "190:20:30", "1:30.5", "-12:30", "2001-12-14"),
    *("2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2001-12-14 21:59:43 +0100"),
    *("-2001-12-14 21:59:43", "2001-1-1", ".inf", "-.Inf", "+.INF", ".nan", ".NaN", ".iNf"),
    *("<<", "=", "< <", "[a]", "{a: 1}", "a, b", ",", "[", "]", "{", "}", "a[b]", "x,y"),
    *("\U0001f600", "a\U00010000b", "\u00a0", "\u3000x\u3000", "é\nzwei", "it's", 'say "hi"'),
    *("$2b$04$abcdefghijklmnopqrstuv", "https://a.example/cb?x=1#f", "user@example.org"),
]
ADVERSARIAL_PIECES = st.sampled_from(ADVERSARIAL)
STRINGS = st.one_of(
    ADVERSARIAL_PIECES,
    st.builds("".join, st.lists(ADVERSARIAL_PIECES | st.text(max_size=3), max_size=4)),
    st.text(alphabet=" :#-?!&*'\"\t\n.eE+_0123456789xob,<=~yesnoONTF\x85\u2028", max_size=8),
    st.text(st.characters(codec="utf-8"), max_size=20),  # no lone surrogates
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.integers(-(10**40), 10**40), STRINGS
)
DOCUMENTS = st.one_of(
    st.lists(st.nothing(), max_size=0),
    st.dictionaries(st.nothing(), st.nothing(), max_size=0),
    st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=4),
        max_leaves=25,
    ).filter(lambda value: isinstance(value, list | dict)),
)


def same(left: Any, right: Any) -> bool:
    """Equal values of equal types, all the way down, keys in the same order (``==`` says
    ``True == 1`` and ``0.0 == -0.0``)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, float):
        return repr(left) == repr(right)
    return bool(left == right)


def assert_reads_back(text: str, data: Any) -> None:
    for loader in LOADERS:
        read = yaml.load(text, Loader=loader)
        assert same(read, data), (loader.__name__, text, read)


@given(DOCUMENTS)
@settings(max_examples=1500, deadline=None)
@example([ADVERSARIAL])
@example({key: key for key in ADVERSARIAL})
@example({"<<": {"a": 1}, "=": ["<<"], "k": [[], {}, [[1]], {"x": {}}]})
def test_every_json_shaped_document_reads_back_the_same(data: Any) -> None:
    text = emit(data)
    assert_reads_back(text, data)
    assert dump_yaml(data) == text


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_an_adversarial_string_reads_back_as_key_value_and_item(text: str) -> None:
    for data in ({text: text}, [text], [{text: [text]}], {"k": {text: {text: text}}}):
        assert_reads_back(emit(data), data)


@given(STRINGS)
@settings(max_examples=1000, deadline=None)
def test_a_plain_string_is_one_pyyaml_resolves_to_str(text: str) -> None:
    """Plain only where PyYAML's own resolver (bools, null, numbers, timestamps, merge,
    value) and the stricter rules of the writer agree it stays this string."""
    written = emit([text])[2:-1]
    if written == text:
        assert is_plain(text)
        resolved = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False))
        assert resolved == "tag:yaml.org,2002:str"


def test_floats_and_numbers_read_back_equal() -> None:
    numbers = [0.1, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 3.0, 10**30, -(2**63)]
    data = [*numbers, math.inf, -math.inf, math.nan, True, False, None, 0, "0", "1.0"]
    text = emit(data)
    assert "- .inf\n- -.inf\n- .nan\n- true\n- false\n- null\n- 0\n- '0'\n- '1.0'\n" in text
    assert_reads_back(text, data)


USER = {
    "username": "user000042",
    "backend": "postgres",
    "extern": None,
    "has_password": True,
    "attributes": {
        "name": "Jürgen O'Neill",
        "email": "user000042@example.org",
        "email_verified": False,
        "omejdn": "user",
        "locale": "en-GB",
        "groups": ["staff", "admins"],
        "employee_number": "00042",
        "since": "2021-03-04",
        "score": 1.5,
        "logins": 12,
    },
    "consent": {},
}
CLIENT = {
    "client_id": "client0001",
    "backend": "postgres",
    "client_name": "Client 1: the app",
    "token_endpoint_auth_method": "private_key_jwt",
    "grant_types": ["authorization_code", "refresh_token"],
    "redirect_uris": ["https://client0001.example.org/callback?x=1&y=2"],
    "scope": ["openid", "profile", "email"],
    "client_secret": None,
    "attributes": {"tier": "gold", "notes": [], "flags": {"yes": "no", "on": True}},
}
USERS_FILE_ENTRY = {
    "username": "admin",
    "password": "$2a$12$J6dCqrDcM2b8J7K4dZ4Cwe2r6s5Dka5YlQ7C8a0Pq2dC1u7X8yW3e",
    "attributes": [{"key": "omejdn", "value": "admin"}, {"key": "name", "value": "Admin"}],
    "consent": {"client0001": ["openid", "profile"]},
    "backend": "yaml",
}
OMEJDN_SECTION = {
    "issuer": "https://auth.example.org",
    "bind_to": "0.0.0.0:4567",
    "openid": True,
    "default_audience": [],
    "accept_audience": ["https://auth.example.org", "https://auth.example.org/token"],
    "access_token": {"expiration": 3600, "algorithm": "RS256"},
    "user_backend_default": "postgres",
}


@pytest.mark.parametrize("record", [USER, CLIENT, USERS_FILE_ENTRY, OMEJDN_SECTION])
def test_typical_records_are_the_text_pyyaml_writes(record: dict[str, Any]) -> None:
    for data in (record, [record, record], [record], {"nested": [record]}):
        expected = yaml.dump(
            data,
            Dumper=yaml_dumper(),  # libyaml's, without anchors: what the package used
            sort_keys=False,
            allow_unicode=True,
            default_flow_style=False,
        )
        assert emit(data) == expected
        assert_reads_back(expected, data)


def test_what_only_the_quoting_changes() -> None:
    """Where PyYAML folds a multi-line string into single quotes, or leaves plain what
    Psych reads as a number or a time, the text differs and reads back the same."""
    data = {
        "note": "é\nzwei",
        "count": "1,000",
        "at": "2001-12-14 21:59:43 +0100",
        "word": "yEs",
        "long": "word " * 30,
    }
    text = emit(data)
    assert text == (
        'note: "é\\nzwei"\n'
        "count: '1,000'\n"
        "at: '2001-12-14 21:59:43 +0100'\n"
        "word: 'yEs'\n"
        f"long: '{'word ' * 30}'\n"
    )
    assert_reads_back(text, data)


def test_control_characters_and_line_separators_are_escaped() -> None:
    data = ["a\x85b", "a\u2028b\u2029c", "\ufeffbom", "del\x7f", "csi\x9b", "\x00\t\x1b", "\uffff"]
    text = emit(data)
    for raw in ("\x85", "\u2028", "\u2029", "\ufeff", "\x7f", "\x9b", "\x00", "\x1b", "\uffff"):
        assert raw not in text
    assert '- "a\\u0085b"\n' in text
    assert_reads_back(text, data)


def test_anything_not_json_shaped_is_left_to_pyyaml() -> None:
    day = datetime.date(2024, 1, 2)
    long_key = "k" * 1200
    for data in (
        "a scalar",
        7,
        None,
        {1: "int key"},
        [day],
        {"t": (1, 2)},
        [{"s": "lone \ud800"}],
        {long_key: 1},
    ):
        with pytest.raises(NotJsonShaped):
            emit(data)
    assert dump_yaml("a scalar") == "a scalar\n"
    assert dump_yaml([day]) == "- 2024-01-02\n"
    assert dump_yaml({long_key: 1}) == f"? {long_key}\n: 1\n"
    assert yaml.load(dump_yaml({long_key: 1}), Loader=yaml.CSafeLoader) == {long_key: 1}
    assert dump_yaml({"t": (1, 2)}) == "t:\n- 1\n- 2\n"
    with pytest.raises(UnicodeEncodeError):
        dump_yaml([{"s": "lone \ud800"}])


def test_a_shared_value_is_written_out_in_each_place() -> None:
    shared = {"role": "staff"}
    text = dump_yaml([{"a": shared}, {"b": shared}])
    assert "&" not in text
    assert "*" not in text
    assert text == "- a:\n    role: staff\n- b:\n    role: staff\n"


# --- Psych, which reads Omejdn's files ----------------------------------------------------

PSYCH_READS = (
    "require 'json'; require 'yaml'; "
    "puts JSON.generate(YAML.safe_load(STDIN.read), allow_nan: true)"
)


def psych_reads(text: str) -> Any:
    """``text`` as Ruby's ``YAML.safe_load`` reads it (Omejdn's own call), through JSON."""
    done = subprocess.run(
        [ruby(), "-e", PSYCH_READS],
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def test_psych_reads_every_adversarial_string_back() -> None:
    data = {
        "values": ADVERSARIAL,
        "keys": {key: index for index, key in enumerate(ADVERSARIAL)},
        "<<": {"merged": "no, a key"},
        "numbers": [1, -1, 0.5, -0.0, 1e16, 1e-7, 10**30, True, False, None],
    }
    assert same(psych_reads(emit(data)), data)


@given(st.lists(STRINGS, min_size=1, max_size=60), st.lists(SCALARS, max_size=10))
@settings(max_examples=40, deadline=None)
def test_psych_reads_generated_documents_back(strings: list[str], scalars: list[Any]) -> None:
    data = {"items": strings, "map": {s: s for s in strings}, "scalars": scalars}
    assert same(psych_reads(emit(data)), data)
