"""ConfigRepository against a real PostgreSQL, results checked with plain SQL.

Both layouts are exercised: our JSONB tables and the TEXT tables Omejdn's Ruby
plugin creates (created here by hand, as a Ruby server sharing the database would).
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, select

from omejdn_pg.errors import InvalidSectionName, InvalidValue, StorageError
from omejdn_pg.postgres.database.engine import count_statements
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.config import ConfigRepository
from tests.kits.strategies import PROPERTY_SETTINGS, same_json
from tests.kits.threads import read_while_writing
from tests.kits.wire import assert_point_read
from tests.kits.witness import PlainSQL

OMEJDN = {
    "host": "https://auth.example.org",
    "issuer": "https://auth.example.org/",
    "openid": True,
    "default_audience": [],
    "accept_audience": "https://auth.example.org/",
    "token": {"expiration": 3600, "algorithm": "RS256", "audience": []},
    "id_token": {"expiration": 3600, "algorithm": "ES256"},
    "ratio": 0.5,
    "nothing": None,
    "unicode": "Grüße/😀",
}
SCOPES = [{"name": "openid"}, "profile", 3, None, ["nested", {"a": 1}], "ü/"]


def store(db: Database, section: str, data: Any) -> None:
    db.write(lambda conn: ConfigRepository(conn).store(section, data))


def load(db: Database, section: str) -> Any:
    return db.read(lambda conn: ConfigRepository(conn).load(section))


def columns(plain_sql: PlainSQL, table: str) -> dict[str, str]:
    rows = plain_sql.rows(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
        (table,),
    )
    return dict(rows)


# --- round trips ---------------------------------------------------------------------


def test_a_section_never_written_is_none(db: Database) -> None:
    assert load(db, "omejdn") is None


def test_dict_section_round_trips_one_row_per_key(db: Database, plain_sql: PlainSQL) -> None:
    store(db, "omejdn", OMEJDN)

    assert load(db, "omejdn") == OMEJDN
    assert columns(plain_sql, "configuration_omejdn") == {"key": "text", "value": "jsonb"}
    assert dict(plain_sql.rows("SELECT key, value FROM configuration_omejdn")) == OMEJDN
    assert (
        plain_sql.value(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'configuration_omejdn'::regclass "
            "AND contype = 'p'"
        )
        == 1
    )


def test_list_section_round_trips_in_position_order(db: Database, plain_sql: PlainSQL) -> None:
    store(db, "scopes", SCOPES)

    assert load(db, "scopes") == SCOPES
    assert columns(plain_sql, "configuration_scopes") == {"position": "bigint", "item": "jsonb"}
    assert (
        plain_sql.value(
            "SELECT identity_generation FROM information_schema.columns "
            "WHERE table_name = 'configuration_scopes' AND column_name = 'position'"
        )
        == "ALWAYS"
    )
    rows = plain_sql.rows("SELECT item FROM configuration_scopes ORDER BY position")
    assert [item for (item,) in rows] == SCOPES


def test_rewriting_replaces_the_whole_section(db: Database, plain_sql: PlainSQL) -> None:
    store(db, "omejdn", OMEJDN)
    store(db, "omejdn", {"only": 1})
    store(db, "scopes", SCOPES)
    store(db, "scopes", list(reversed(SCOPES)))

    assert load(db, "omejdn") == {"only": 1}
    assert load(db, "scopes") == list(reversed(SCOPES))
    assert plain_sql.value("SELECT count(*) FROM configuration_scopes") == len(SCOPES)


@pytest.mark.parametrize("empty", [{}, []])
def test_empty_sections_keep_their_shape(db: Database, empty: Any) -> None:
    store(db, "empty", empty)

    loaded = load(db, "empty")

    assert loaded == empty
    assert type(loaded) is type(empty)


def test_switching_shape_replaces_the_table(db: Database, plain_sql: PlainSQL) -> None:
    store(db, "mixed", OMEJDN)
    store(db, "mixed", SCOPES)

    assert load(db, "mixed") == SCOPES
    assert columns(plain_sql, "configuration_mixed") == {"position": "bigint", "item": "jsonb"}

    store(db, "mixed", OMEJDN)

    assert load(db, "mixed") == OMEJDN
    assert columns(plain_sql, "configuration_mixed") == {"key": "text", "value": "jsonb"}


def test_a_store_is_part_of_the_callers_transaction(db: Database, plain_sql: PlainSQL) -> None:
    store(db, "omejdn", OMEJDN)

    def reshape_then_fail(conn: Connection) -> None:
        ConfigRepository(conn).store("omejdn", SCOPES)
        ConfigRepository(conn).store("fresh", {"a": 1})
        raise RuntimeError("the event failed later")

    with pytest.raises(RuntimeError):
        db.write(reshape_then_fail)

    assert load(db, "omejdn") == OMEJDN
    assert load(db, "fresh") is None
    assert columns(plain_sql, "configuration_omejdn") == {"key": "text", "value": "jsonb"}


def test_longest_section_name(db: Database) -> None:
    section = "s" + "x" * 48
    store(db, section, OMEJDN)
    store(db, section, SCOPES)  # the table is replaced, its constraint names too

    assert load(db, section) == SCOPES
    assert section in db.read(lambda conn: ConfigRepository(conn).sections())
    assert db.write(lambda conn: ConfigRepository(conn).delete(section)) is True


# --- the Ruby plugin's TEXT tables ---------------------------------------------------


def test_ruby_dict_table_is_read_and_written_in_place(db: Database, plain_sql: PlainSQL) -> None:
    plain_sql.execute("CREATE TABLE configuration_legacy (key TEXT PRIMARY KEY, value TEXT)")
    ruby_rows = {
        "issuer": '"https://auth.example.org/"',
        "openid": "true",
        "token": '{"expiration":3600,"audience":[]}',
        "nothing": "null",
        "ratio": "0.5",
    }
    for key, value in ruby_rows.items():
        plain_sql.execute("INSERT INTO configuration_legacy VALUES (%s, %s)", (key, value))

    assert load(db, "legacy") == {k: json.loads(v) for k, v in ruby_rows.items()}

    store(db, "legacy", {"a/b": {"x": "Grüße/😀", "n": [1, 2.5, None]}, "big": 1e16})

    assert columns(plain_sql, "configuration_legacy") == {"key": "text", "value": "text"}
    # What Omejdn's JSON.generate writes: compact, raw UTF-8, '/' unescaped; and the
    # number text as Python wrote it, untouched by jsonb.
    assert dict(plain_sql.rows("SELECT key, value FROM configuration_legacy")) == {
        "a/b": '{"x":"Grüße/😀","n":[1,2.5,null]}',
        "big": "1e+16",
    }
    loaded = load(db, "legacy")
    assert loaded == {"a/b": {"x": "Grüße/😀", "n": [1, 2.5, None]}, "big": 1e16}
    assert isinstance(loaded["big"], float)


def test_ruby_list_table_without_positions(db: Database, plain_sql: PlainSQL) -> None:
    plain_sql.execute("CREATE TABLE configuration_llist (item TEXT)")
    for item in ('{"name":"openid"}', '"profile"', "3"):
        plain_sql.execute("INSERT INTO configuration_llist VALUES (%s)", (item,))

    assert load(db, "llist") == [{"name": "openid"}, "profile", 3]

    store(db, "llist", SCOPES)

    assert columns(plain_sql, "configuration_llist") == {"item": "text"}
    rows = plain_sql.rows("SELECT item FROM configuration_llist ORDER BY ctid")
    assert [item for (item,) in rows] == [
        json.dumps(i, ensure_ascii=False, separators=(",", ":")) for i in SCOPES
    ]
    assert load(db, "llist") == SCOPES


def test_ruby_tables_switch_shape_into_ours(db: Database, plain_sql: PlainSQL) -> None:
    plain_sql.execute("CREATE TABLE configuration_legacy (key TEXT PRIMARY KEY, value TEXT)")
    plain_sql.execute("INSERT INTO configuration_legacy VALUES ('a', '1')")
    plain_sql.execute("CREATE TABLE configuration_llist (item TEXT)")

    store(db, "legacy", SCOPES)
    store(db, "llist", OMEJDN)

    assert load(db, "legacy") == SCOPES
    assert load(db, "llist") == OMEJDN
    assert columns(plain_sql, "configuration_legacy") == {"position": "bigint", "item": "jsonb"}
    assert columns(plain_sql, "configuration_llist") == {"key": "text", "value": "jsonb"}


def test_unreadable_json_text_names_section_and_key(db: Database, plain_sql: PlainSQL) -> None:
    plain_sql.execute("CREATE TABLE configuration_legacy (key TEXT PRIMARY KEY, value TEXT)")
    plain_sql.execute("INSERT INTO configuration_legacy VALUES ('issuer', 'https://not-json')")

    with pytest.raises(StorageError, match=r"'legacy'.*'issuer'"):
        load(db, "legacy")


def test_a_table_of_another_layout_is_left_alone(db: Database, plain_sql: PlainSQL) -> None:
    plain_sql.execute("CREATE TABLE configuration_weird (a INT)")
    plain_sql.execute("INSERT INTO configuration_weird VALUES (1)")

    with pytest.raises(StorageError, match="configuration_weird"):
        load(db, "weird")
    with pytest.raises(StorageError, match="configuration_weird"):
        store(db, "weird", {"a": 1})

    assert plain_sql.rows("SELECT a FROM configuration_weird") == [(1,)]


# --- reads: one statement, also inside transactions ----------------------------------


@pytest.mark.parametrize("layout", ["dict", "list", "ruby dict", "ruby list", "missing"])
def test_load_is_one_statement_and_no_transaction(
    db: Database, plain_sql: PlainSQL, layout: str
) -> None:
    expected: Any = {"dict": OMEJDN, "list": SCOPES, "ruby dict": {"a": 1}, "ruby list": [1, 2]}
    if layout == "ruby dict":
        plain_sql.execute("CREATE TABLE configuration_s (key TEXT PRIMARY KEY, value TEXT)")
        plain_sql.execute("INSERT INTO configuration_s VALUES ('a', '1')")
    elif layout == "ruby list":
        plain_sql.execute("CREATE TABLE configuration_s (item TEXT)")
        plain_sql.execute("INSERT INTO configuration_s VALUES ('1'), ('2')")
    elif layout != "missing":
        store(db, "s", expected[layout])

    loaded = assert_point_read(db, lambda conn: ConfigRepository(conn).load("s"))

    assert loaded == expected.get(layout)


def test_loading_a_missing_section_does_not_abort_a_batch(
    db: Database, plain_sql: PlainSQL
) -> None:
    with db.batch():
        assert load(db, "missing") is None
        store(db, "omejdn", OMEJDN)
        assert load(db, "omejdn") == OMEJDN
        assert load(db, "missing") is None
        store(db, "scopes", SCOPES)

    assert dict(plain_sql.rows("SELECT key, value FROM configuration_omejdn")) == OMEJDN
    assert load(db, "scopes") == SCOPES


def test_loading_a_missing_section_inside_a_write(db: Database) -> None:
    def load_then_store(conn: Connection) -> Any:
        repository = ConfigRepository(conn)
        before = repository.load("omejdn")
        repository.store("omejdn", OMEJDN)
        return before, repository.load("omejdn")

    assert db.write(load_then_store) == (None, OMEJDN)


# --- listing and deleting ------------------------------------------------------------


def test_sections_lists_existing_sections_sorted(db: Database, plain_sql: PlainSQL) -> None:
    store(db, "zeta", {})
    store(db, "alpha", [])
    plain_sql.execute("CREATE TABLE configuration_ruby (key TEXT PRIMARY KEY, value TEXT)")
    plain_sql.execute('CREATE TABLE "configuration_Upper" (key TEXT, value TEXT)')
    plain_sql.execute("CREATE TABLE configurationx (key TEXT, value TEXT)")
    plain_sql.execute("CREATE VIEW configuration_view AS SELECT 1 AS key, 2 AS value")

    assert db.read(lambda conn: ConfigRepository(conn).sections()) == ["alpha", "ruby", "zeta"]


def test_delete_drops_the_table(db: Database, plain_sql: PlainSQL) -> None:
    store(db, "omejdn", OMEJDN)

    assert db.write(lambda conn: ConfigRepository(conn).delete("omejdn")) is True
    assert db.write(lambda conn: ConfigRepository(conn).delete("omejdn")) is False
    assert plain_sql.value("SELECT to_regclass('configuration_omejdn')") is None
    assert load(db, "omejdn") is None
    assert db.read(lambda conn: ConfigRepository(conn).sections()) == []

    store(db, "omejdn", SCOPES)
    assert load(db, "omejdn") == SCOPES


# --- refusals ------------------------------------------------------------------------

ADVERSARIAL_NAMES = [
    "x; DROP TABLE users; --",
    "users; --",
    "x'",
    'x"',
    '"x"',
    "Omejdn",
    "OMEJDN",
    "two words",
    " x",
    "x" * 50,
    "a" + "b" * 60,
    "",
    "grüße",
    "x\n",
    "x\x00",
    "1abc",
    "_x",
    "x-y",
    "x.y",
    "public.x",
    None,
    7,
    ["x"],
]


def test_bad_section_names_are_refused_before_any_sql(db: Database, plain_sql: PlainSQL) -> None:
    tables = plain_sql.rows("SELECT relname FROM pg_class WHERE relkind = 'r' ORDER BY 1")
    db.read(lambda conn: conn.execute(select(1)))  # the dialect's first-connect queries
    statements = count_statements(db.engine)

    # One database for all names: a database per case would cost more than the checks.
    for section in ADVERSARIAL_NAMES:
        operations = [
            lambda conn, s=section: ConfigRepository(conn).store(s, {"a": 1}),
            lambda conn, s=section: ConfigRepository(conn).store(s, [1]),
            lambda conn, s=section: ConfigRepository(conn).load(s),
            lambda conn, s=section: ConfigRepository(conn).delete(s),
        ]
        for operation in operations:
            for run in (db.write, db.read):
                with pytest.raises(InvalidSectionName, match="invalid configuration section"):
                    run(operation)

    assert statements == []
    assert plain_sql.rows("SELECT relname FROM pg_class WHERE relkind = 'r' ORDER BY 1") == tables
    assert plain_sql.value("SELECT count(*) FROM users") == 0


BAD_VALUES: list[tuple[Any, str]] = [
    ({"issuer": "a\x00b"}, "'omejdn': issuer"),
    ({"token": {"deep": ["ok", "a\x00"]}}, "'omejdn': token.deep[1]"),
    ({"token": {"k\x00": 1}}, "'omejdn': token"),
    ({"k\x00": 1}, "'omejdn': key"),
    ({"k\ud800": 1}, "'omejdn': key"),
    ({"v": "\udfff"}, "'omejdn': v"),
    ({"ratio": float("nan")}, "'omejdn': ratio"),
    ({"ratio": float("inf")}, "'omejdn': ratio"),
    ({"when": object()}, "'omejdn': when"),
    ({1: "int key"}, "'omejdn': key 1"),
    (["ok", {"a": "\x00"}], "'omejdn': [1].a"),
    ("a string", "dict or a list"),
    (None, "dict or a list"),
    (("a", "tuple"), "dict or a list"),
]


def test_bad_values_are_refused_before_any_sql(db: Database, plain_sql: PlainSQL) -> None:
    db.read(lambda conn: conn.execute(select(1)))
    statements = count_statements(db.engine)

    for data, named in BAD_VALUES:
        with pytest.raises(InvalidValue) as caught:
            store(db, "omejdn", data)
        assert named in str(caught.value), (data, str(caught.value))

    assert statements == []
    assert plain_sql.value("SELECT to_regclass('configuration_omejdn')") is None


# --- concurrency ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("switch_shape", [False, True], ids=["same shape", "switching shape"])
def test_concurrent_writers_and_readers_see_whole_sections(
    db: Database, switch_shape: bool
) -> None:
    first = {f"key{i}": {"writer": "first", "i": i} for i in range(40)}
    second: Any = (
        [{"writer": "second", "i": i} for i in range(40)]
        if switch_shape
        else {f"key{i}": {"writer": "second", "i": i} for i in range(40)}
    )
    payloads = [first, second]
    start = threading.Barrier(8)

    def write(index: int) -> None:
        start.wait()  # all writers race for the table's creation together
        for round_ in range(12):
            store(db, "race", payloads[(index + round_) % 2])

    seen, failures = read_while_writing(write, lambda: load(db, "race"))

    assert failures == []
    assert seen
    assert all(content is None or content in payloads for content in seen)
    assert load(db, "race") in payloads


# --- arbitrary JSON ------------------------------------------------------------------

# PostgreSQL text holds neither U+0000 nor lone surrogates (refused, as tested above).
_chars = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
_text = st.text(_chars, max_size=20)
_large_text = st.builds(
    lambda chars, n: chars * n,
    st.text(_chars, min_size=1, max_size=3),
    st.integers(1_000, 50_000),
)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
    | _large_text
)
json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(_text, children, max_size=6),
    max_leaves=25,
)
_sections = (f"h{n}" for n in itertools.count())


@PROPERTY_SETTINGS
@given(
    data=st.dictionaries(_text, json_values, max_size=6) | st.lists(json_values, max_size=6),
    ruby=st.booleans(),
)
def test_arbitrary_json_round_trips(
    db: Database, plain_sql: PlainSQL, data: Any, ruby: bool
) -> None:
    section = next(_sections)
    if ruby:
        layout = "key TEXT PRIMARY KEY, value TEXT" if isinstance(data, dict) else "item TEXT"
        plain_sql.execute(f"CREATE TABLE configuration_{section} ({layout})")

    store(db, section, data)
    loaded = load(db, section)

    if ruby:
        # JSON text is kept as written, so even the number types survive.
        assert loaded == data
        assert columns(plain_sql, f"configuration_{section}").get("item", "text") == "text"
    else:
        assert same_json(loaded) == same_json(data)
    assert type(loaded) is type(data)
