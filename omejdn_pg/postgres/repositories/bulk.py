"""Many users at once, for an import: a staging table, one comparison, set-wise writes.

Fired as one USER_CREATE or USER_UPDATE each, an import of 20,000 users costs
20,000 statements and round trips — about ten seconds. Here one statement
finds which of the names are stored; only those users are copied (``COPY``,
one stream) into a temporary staging table, where one statement compares them
with ``users`` and their folded attributes and returns the names that differ.
A fixed number of statements writes the rest: the changed users staged again
and updated by one UPDATE, the new ones copied into ``users``, one DELETE of
their attribute rows and one COPY of the new ones. An unchanged re-import reads
and writes nothing else; a first import stages nothing.

Rows are copied straight into ``users`` and ``attributes``, in username (and
attribute) order, rather than staged and moved by INSERT … SELECT: the server then
maintains the tables' indexes while this process is still encoding the next
rows, on indexes that grow at their right end: at 20,000 users the write
takes little more than half the time. A value is sent as its JSON text, which a JSONB column
(ours) parses and a TEXT column (Omejdn's Ruby plugin) keeps as written:
compact, as Ruby writes it, where jsonb assigned to text has PostgreSQL's
spaced form; both read back to the same value.

Every user is checked by :meth:`UserImport.check` — :meth:`UserRepository.checked`,
the rules and messages of a single create or update — and by nothing else, so
nothing reaches the database that USER_CREATE would refuse. Values compare as
PostgreSQL stores them (jsonb: key order inside a value and ``1.0`` against
``1`` do not count, ``true`` against ``1`` does); the order of a user's
attributes counts, since reads give them back in it.

Concurrency is that of the one-by-one path. New rows go in in username order
and wait for a concurrent writer of the same name, as INSERT … ON CONFLICT
would: a name another writer stored meanwhile is :class:`AlreadyExists`, a
changed user deleted meanwhile :class:`NotFound`, and the caller plans again.
Rows are inserted and locked in username order, so two imports of overlapping
sets wait for each other instead of deadlocking; attribute rows are touched
only after the user rows are locked (see
:mod:`omejdn_pg.postgres.repositories.users`).

The trade-offs: the staging table is a TEMP table (``ON COMMIT DROP``), which
needs the TEMPORARY privilege on the database (PUBLIC has it unless revoked;
without it :meth:`UserImport.may_stage` says so and the import goes one by one);
and stored users that may have changed are staged twice, once to compare and
once to write, because the plan holds no transaction while the caller hashes
plaintext passwords or shows what would change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from omejdn_pg.entities import User
from omejdn_pg.errors import AlreadyExists, NotFound
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.cache.changes import publish_change
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.common import dumps
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.postgres.schema import USER_OWNER

STAGING: Final = "omejdn_pg_staged_users"
CHANGE_GROUP: Final = "user"

Row = tuple[str, str | None, str | None, str, dict[str, Any]]
"""A checked user: username, password hash, extern, consent (as JSON text) and
attributes (checked; encoded only where they are sent)."""

_CREATE_STAGING: Final = text(
    f"""
    CREATE TEMPORARY TABLE {STAGING} (
        username text NOT NULL,
        password text,
        extern text,
        consent jsonb NOT NULL,
        attributes json
    ) ON COMMIT DROP
    """
)
_COLUMNS: Final = "username, password, extern, consent"
# Staged to compare: every column. Staged to update: no attributes, whose rows
# are copied into ``attributes`` directly, as new users are into ``users``.
_COPY_COMPARED: Final = f"COPY {STAGING} ({_COLUMNS}, attributes) FROM STDIN"
_COPY_UPDATED: Final = f"COPY {STAGING} ({_COLUMNS}) FROM STDIN"
_COPY_CREATED: Final = f"COPY users ({_COLUMNS}) FROM STDIN"
_COPY_ATTRIBUTES: Final = "COPY attributes (type, identifier, key, value, ordinal) FROM STDIN"
# A correlated fold per staged user (an index range scan on the attributes' key)
# beats a hash aggregate over the whole attributes table while the staging
# table has no statistics, which a temp table never gets on its own.
_COMPARE: Final = text(
    f"""
    SELECT s.username, u.username IS NULL AS created
    FROM {STAGING} AS s LEFT JOIN users AS u ON u.username = s.username
    WHERE u.username IS NULL
       OR u.password IS DISTINCT FROM s.password
       OR u.extern IS DISTINCT FROM s.extern
       OR CAST(u.consent AS jsonb) <> s.consent
       OR CAST(s.attributes AS jsonb) <> COALESCE(
            (SELECT jsonb_object_agg(a.key, CAST(a.value AS jsonb))
             FROM attributes AS a
             WHERE a.type = '{USER_OWNER}' AND a.identifier = s.username),
            '{{}}'::jsonb)
       OR ARRAY(SELECT json_object_keys(s.attributes)) <> ARRAY(
            SELECT a.key FROM attributes AS a
            WHERE a.type = '{USER_OWNER}' AND a.identifier = s.username
            ORDER BY a.ordinal, a.key)
    """
)
_LOCK_UPDATED: Final = text(
    f"""
    SELECT u.username FROM users AS u JOIN {STAGING} AS s ON s.username = u.username
    ORDER BY u.username FOR UPDATE OF u
    """
)
_UPDATE: Final = text(
    f"""
    UPDATE users AS u
    SET password = s.password, extern = s.extern, consent = s.consent
    FROM {STAGING} AS s
    WHERE s.username = u.username
    """
)
_DELETE_UPDATED_ATTRIBUTES: Final = text(
    f"""
    DELETE FROM attributes AS a USING {STAGING} AS s
    WHERE a.type = '{USER_OWNER}' AND a.identifier = s.username
    """
)
# Many names go as one JSON array, joined with: a fifth of the time of a text[]
# parameter, which the driver builds and the server parses element by element.
_NAMES: Final = "jsonb_array_elements_text(CAST(:names AS jsonb)) AS n(name)"
# Attribute rows of a new name are replaced too: rows left behind without a
# user (the Ruby plugin deletes in several transactions) are not inherited.
_DELETE_CREATED_ATTRIBUTES: Final = text(
    f"""
    DELETE FROM attributes AS a USING {_NAMES}
    WHERE a.type = '{USER_OWNER}' AND a.identifier = n.name
    """
)
_STORED_NAMES: Final = text(
    f"SELECT u.username FROM users AS u JOIN {_NAMES} ON u.username = n.name"
)
_MAY_STAGE: Final = text("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
_STORED_PASSWORDS: Final = text(
    "SELECT username, password FROM users WHERE username = ANY(CAST(:names AS text[]))"
)


_TAKEN: Final = re.compile(r"Key \(username\)=\((.*)\) already exists", re.DOTALL)
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_STRING: Final = json.encoder.encode_basestring
"""What the encoder makes of a str (its C function, when there is one)."""
_EMPTY: Final = "{}"


def encoded(value: object) -> str:
    """:func:`dumps`' text of ``value``, without building an encoder per call."""
    try:
        return _ENCODER.encode(value)
    except TypeError:
        return dumps(value)  # a mapping other than dict, which dumps turns into one


def value_text(value: object) -> str:
    """An attribute value's JSON text; strings, booleans, integers and null (nearly
    every attribute) without the encoder's cost per call, which is most of theirs."""
    if type(value) is str:
        return _STRING(value)
    if type(value) is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    return encoded(value)


@dataclass(frozen=True)
class Comparison:
    """Which staged users are new and which differ from the stored ones."""

    created: frozenset[str]
    updated: frozenset[str]


def check(checker: UserRepository, users: Iterable[User], into: dict[str, Row]) -> None:
    """``users`` checked as USER_CREATE checks them (:meth:`UserRepository.checked`: the
    first bad one raises its error), each kept in ``into`` as its row."""
    for user in users:
        values = checker.checked(user)
        consent = values["consent_doc"]
        name = values["name"]
        into[name] = (
            name,
            values["password_hash"],
            values["extern_idp"],
            encoded(consent) if consent else _EMPTY,
            values["attribute_doc"],
        )


class BulkUsers:
    """The staging table and the set-wise statements, on one connection whose
    transaction the caller owns (the staging table lives as long as it)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def stage(self, rows: Iterable[Row]) -> None:
        """Create the staging table and COPY ``rows`` into it, to :meth:`compare`."""
        self.conn.execute(_CREATE_STAGING)
        self._copy(
            _COPY_COMPARED,
            (
                (name, password, extern, consent, encoded(attributes))
                for name, password, extern, consent, attributes in rows
            ),
        )

    def compare(self) -> Comparison:
        """The staged users that are not stored, and those stored otherwise."""
        created: set[str] = set()
        updated: set[str] = set()
        for username, is_new in self.conn.execute(_COMPARE):
            (created if is_new else updated).add(username)
        return Comparison(frozenset(created), frozenset(updated))

    def write(self, comparison: Comparison, rows: Mapping[str, Row]) -> None:
        """Store the users ``comparison`` names as ``rows`` has them: the changed ones
        staged and updated, the new ones copied in, then their attribute rows.
        AlreadyExists / NotFound when another writer got there first."""
        conn = self.conn
        if comparison.updated:
            updated = sorted(comparison.updated)
            conn.execute(_CREATE_STAGING)
            self._copy(_COPY_UPDATED, (rows[name][:4] for name in updated))
            locked = conn.execute(_LOCK_UPDATED).scalars().all()
            if len(locked) != len(updated):
                gone = sorted(comparison.updated - set(locked))[0]
                raise NotFound(f"user {gone!r} does not exist")
            conn.execute(_UPDATE)
            conn.execute(_DELETE_UPDATED_ATTRIBUTES)
        if comparison.created:
            created = sorted(comparison.created)
            self._copy(_COPY_CREATED, (rows[name][:4] for name in created), taken=True)
            conn.execute(_DELETE_CREATED_ATTRIBUTES, {"names": encoded(created)})
        names = sorted(comparison.created | comparison.updated)
        self._copy(_COPY_ATTRIBUTES, _attribute_rows(rows[name] for name in names))

    def _copy(self, statement: str, rows: Iterable[tuple[Any, ...]], taken: bool = False) -> None:
        """COPY ``rows``; with ``taken``, a name already stored is AlreadyExists."""
        driver = self.conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                write = copy.write_row
                for row in rows:
                    write(row)
        except psycopg.errors.UniqueViolation as error:
            if not taken:
                raise sa_exc.DBAPIError.instance(statement, None, error, psycopg.Error) from error
            # Rows go in in username order and wait for a concurrent writer of the
            # same name, as INSERT … ON CONFLICT would; this one committed first.
            raise AlreadyExists(f"{_taken(error)} exists already") from error
        except psycopg.Error as error:
            # So that the Database translates it like any statement's error.
            raise sa_exc.DBAPIError.instance(statement, None, error, psycopg.Error) from error

    def stored_passwords(self, names: Collection[str]) -> dict[str, str | None]:
        """The stored hash of each of ``names`` that is stored."""
        result = self.conn.execute(_STORED_PASSWORDS, {"names": sorted(names)})
        return {username: password for username, password in result}


def _taken(error: psycopg.errors.UniqueViolation) -> str:
    """The user a unique violation on ``users`` names, as messages name one."""
    found = _TAKEN.match(error.diag.message_detail or "")
    return f"user {found.group(1)!r}" if found is not None else "a user of the import"


def _attribute_rows(rows: Iterable[Row]) -> Iterator[tuple[str, str, str, str, int]]:
    """The ``attributes`` rows of ``rows``, each numbered by its place in its user's."""
    owner = USER_OWNER
    for name, _password, _extern, _consent, attributes in rows:
        for ordinal, (key, value) in enumerate(attributes.items(), 1):
            yield owner, name, key, value_text(value), ordinal


@dataclass(frozen=True)
class Plan:
    """Users checked and encoded, and how they differ from what is stored."""

    rows: dict[str, Row]
    comparison: Comparison


class UserImport:
    """Set-wise import of users into PostgreSQL, in the Database's units of work."""

    def __init__(
        self, database: Database, policy: PasswordPolicy, changed: Callable[[], None]
    ) -> None:
        self.database = database
        self.policy = policy
        self._changed = changed

    def stored_passwords(self, names: Collection[str]) -> dict[str, str | None]:
        """One statement for all of ``names``, so plaintext passwords can be verified
        before any transaction opens."""
        if not names:
            return {}
        return self.database.read(lambda conn: BulkUsers(conn).stored_passwords(names))

    def may_stage(self) -> bool:
        """Whether this role may create the temporary staging table (else the caller
        goes one by one)."""
        return bool(
            self.database.read(lambda conn: conn.execute(_MAY_STAGE).scalar_one(), on_primary=True)
        )

    def check(self, users: Iterable[User], into: dict[str, Row]) -> None:
        """Check ``users`` as USER_CREATE does (the first bad one raises its error, which
        names the user and the field) and keep each in ``into``, for :meth:`plan`.

        The only check of a user the import makes: nothing is sent, and a caller
        may check some users before hashing the plaintext passwords of others.
        """
        self.database.read(lambda conn: check(UserRepository(conn, self.policy), users, into))

    def plan(self, rows: dict[str, Row]) -> Plan:
        """Compare the users :meth:`check` made ``rows`` of with the stored ones.

        Names nobody stores are new without further ado: one statement finds
        which names are stored, and only those users are staged and compared,
        in a transaction of its own that writes nothing (its staging table goes
        with it). A first import so stages its users once, for the write.
        """
        stored: set[str] = set()
        if rows:
            stored = set(
                self.database.read(
                    lambda conn: (
                        conn.execute(_STORED_NAMES, {"names": encoded(list(rows))}).scalars().all()
                    ),
                    on_primary=True,
                )
            )
        created = frozenset(rows.keys() - stored)
        if not stored:
            return Plan(rows, Comparison(created, frozenset()))

        def compare(conn: Connection) -> Comparison:
            bulk = BulkUsers(conn)
            bulk.stage(rows[name] for name in sorted(stored))
            return bulk.compare()

        found = self.database.write(compare)
        return Plan(rows, Comparison(created | found.created, found.updated))

    def write(self, plan: Plan) -> None:
        """Write what ``plan`` found changed, announced to every read cache; inside a
        batch, in the batch's transaction."""
        comparison = plan.comparison
        if not comparison.created and not comparison.updated:
            return

        def write(conn: Connection) -> None:
            BulkUsers(conn).write(comparison, plan.rows)
            publish_change(conn, CHANGE_GROUP, None)

        try:
            self.database.write(write)
        finally:
            # Whatever the outcome, this process must not serve what it had
            # cached of these users: the change may have committed.
            self._changed()
