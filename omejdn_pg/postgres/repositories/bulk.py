"""Many users at once, for an import: a staging table, one comparison, set-wise writes.

Fired as one USER_CREATE or USER_UPDATE each, an import of 20,000 users costs
20,000 statements and round trips — about ten seconds. Here the users are
copied (``COPY``, one stream) into a temporary staging table, one statement
compares them with ``users`` and their folded attributes and returns only the
names that differ, and a fixed number of statements writes those: one INSERT
of the new users, one UPDATE of the changed ones, one DELETE and one INSERT of
their attribute rows. An unchanged re-import reads and writes nothing else.

Every user is first checked by :meth:`UserRepository.checked` — the rules and
messages of a single create or update — so nothing reaches the database that
USER_CREATE would refuse. Values compare as PostgreSQL stores them (jsonb:
key order and ``1.0`` against ``1`` do not count, ``true`` against ``1`` does).

Concurrency is that of the one-by-one path. New rows go in with ON CONFLICT
DO NOTHING: a name another writer stored meanwhile is :class:`AlreadyExists`,
a changed user deleted meanwhile :class:`NotFound`, and the caller plans
again. Rows are inserted and locked in username order, so two imports of
overlapping sets wait for each other instead of deadlocking; attribute rows
are touched only after the user rows are locked (see
:mod:`omejdn_pg.postgres.repositories.users`).

The trade-offs: the staging table is a TEMP table (``ON COMMIT DROP``), which
needs the TEMPORARY privilege on the database (PUBLIC has it unless revoked;
without it :meth:`UserImport.may_stage` says so and the import goes one by one);
and stored users that may have changed are staged twice, once to compare and
once to write, because the plan holds no transaction while the caller hashes
plaintext passwords or shows what would change.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from omejdn_pg.entities import User
from omejdn_pg.errors import AlreadyExists, NotFound
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.postgres.cache import publish_change
from omejdn_pg.postgres.database import Database
from omejdn_pg.postgres.repositories.common import dumps
from omejdn_pg.postgres.repositories.users import UserRepository
from omejdn_pg.postgres.schema import USER_OWNER

STAGING: Final = "omejdn_pg_staged_users"
CHANGE_GROUP: Final = "user"

Row = tuple[str, str | None, str | None, str, str]
"""A staged user as COPY sends it: username, password hash, extern, consent and
attributes (JSON documents)."""

_CREATE_STAGING: Final = text(
    f"""
    CREATE TEMPORARY TABLE {STAGING} (
        username text NOT NULL,
        password text,
        extern text,
        consent jsonb NOT NULL,
        attributes jsonb NOT NULL,
        created boolean
    ) ON COMMIT DROP
    """
)
_COLUMNS: Final = "username, password, extern, consent, attributes"
_COPY: Final = f"COPY {STAGING} ({_COLUMNS}) FROM STDIN"
_COPY_PLANNED: Final = f"COPY {STAGING} ({_COLUMNS}, created) FROM STDIN"
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
       OR s.attributes <> COALESCE(
            (SELECT jsonb_object_agg(a.key, CAST(a.value AS jsonb))
             FROM attributes AS a
             WHERE a.type = '{USER_OWNER}' AND a.identifier = s.username),
            '{{}}'::jsonb)
    """
)
_LOCK_UPDATED: Final = text(
    f"""
    SELECT u.username FROM users AS u JOIN {STAGING} AS s ON s.username = u.username
    WHERE NOT s.created ORDER BY u.username FOR UPDATE OF u
    """
)
_UPDATE: Final = text(
    f"""
    UPDATE users AS u
    SET password = s.password, extern = s.extern, consent = s.consent
    FROM {STAGING} AS s
    WHERE s.username = u.username AND NOT s.created
    """
)
_INSERT: Final = text(
    f"""
    WITH inserted AS (
        INSERT INTO users (username, password, extern, consent)
        SELECT username, password, extern, consent FROM {STAGING}
        WHERE created ORDER BY username
        ON CONFLICT (username) DO NOTHING
        RETURNING username
    )
    SELECT s.username FROM {STAGING} AS s
    WHERE s.created AND s.username NOT IN (SELECT username FROM inserted)
    ORDER BY s.username LIMIT 1
    """
)
# Attribute rows of a new name are replaced too: rows left behind without a
# user (the Ruby plugin deletes in several transactions) are not inherited.
_DELETE_ATTRIBUTES: Final = text(
    f"""
    DELETE FROM attributes AS a USING {STAGING} AS s
    WHERE a.type = '{USER_OWNER}' AND a.identifier = s.username
    """
)
_INSERT_ATTRIBUTES: Final = text(
    f"""
    INSERT INTO attributes (type, identifier, key, value)
    SELECT '{USER_OWNER}', s.username, e.key, e.value
    FROM {STAGING} AS s, jsonb_each(s.attributes) AS e
    """
)
_STORED_NAMES: Final = text(
    "SELECT username FROM users WHERE username = ANY(CAST(:names AS text[]))"
)
_MAY_STAGE: Final = text("SELECT has_database_privilege(current_database(), 'TEMPORARY')")
_STORED_PASSWORDS: Final = text(
    "SELECT username, password FROM users WHERE username = ANY(CAST(:names AS text[]))"
)


@dataclass(frozen=True)
class Comparison:
    """Which staged users are new and which differ from the stored ones."""

    created: frozenset[str]
    updated: frozenset[str]


def checked_rows(
    conn: Connection, users: Iterable[User], policy: PasswordPolicy, into: dict[str, Row]
) -> Iterator[Row]:
    """``users`` checked as USER_CREATE checks them (:meth:`UserRepository.checked`: the
    first bad one raises its error) and encoded for COPY; each also kept in ``into``.

    A generator, so that a COPY can send each row as soon as it is checked.
    """
    checker = UserRepository(conn, policy)
    for user in users:
        values = checker.checked(user)
        row = (
            values["name"],
            values["password_hash"],
            values["extern_idp"],
            dumps(values["consent_doc"]),
            dumps(values["attribute_doc"]),
        )
        into[row[0]] = row
        yield row


class BulkUsers:
    """The staging table and the set-wise statements, on one connection whose
    transaction the caller owns (the staging table lives as long as it)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def copy(self, rows: Iterable[Row], comparison: Comparison | None = None) -> None:
        """Create the staging table and COPY ``rows`` into it (marked new or changed
        as ``comparison`` says, for :meth:`write`)."""
        self.conn.execute(_CREATE_STAGING)
        driver = self.conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        statement = _COPY if comparison is None else _COPY_PLANNED
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                if comparison is None:
                    for row in rows:
                        copy.write_row(row)
                else:
                    created = comparison.created
                    for row in rows:
                        copy.write_row((*row, row[0] in created))
        except psycopg.Error as error:
            # So that the Database translates it like any statement's error.
            raise sa_exc.DBAPIError.instance(statement, None, error, psycopg.Error) from error

    def compare(self) -> Comparison:
        """The staged users that are not stored, and those stored otherwise."""
        created: set[str] = set()
        updated: set[str] = set()
        for username, is_new in self.conn.execute(_COMPARE):
            (created if is_new else updated).add(username)
        return Comparison(frozenset(created), frozenset(updated))

    def write(self, comparison: Comparison) -> None:
        """Store every staged user as staged (rows copied with ``comparison``).
        AlreadyExists / NotFound when another writer got there first."""
        conn = self.conn
        if comparison.updated:
            locked = conn.execute(_LOCK_UPDATED).scalars().all()
            if len(locked) != len(comparison.updated):
                gone = sorted(comparison.updated - set(locked))[0]
                raise NotFound(f"user {gone!r} does not exist")
            conn.execute(_UPDATE)
        if comparison.created:
            taken = conn.execute(_INSERT).scalar_one_or_none()
            if taken is not None:
                raise AlreadyExists(f"user {taken!r} exists already")
        conn.execute(_DELETE_ATTRIBUTES)
        conn.execute(_INSERT_ATTRIBUTES)

    def stored_passwords(self, names: Collection[str]) -> dict[str, str | None]:
        """The stored hash of each of ``names`` that is stored."""
        result = self.conn.execute(_STORED_PASSWORDS, {"names": sorted(names)})
        return {username: password for username, password in result}


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

    def plan(self, users: Sequence[User]) -> Plan:
        """Check ``users`` and compare them with the stored ones.

        Names nobody stores are new without further ado: one statement finds
        which names are stored, and only those users are staged and compared,
        in a transaction of its own that writes nothing (its staging table goes
        with it). A first import so stages its users once, for the write.
        """
        rows: dict[str, Row] = {}

        def stored_names(conn: Connection) -> set[str]:
            for _row in checked_rows(conn, users, self.policy, rows):
                pass
            found = conn.execute(_STORED_NAMES, {"names": list(rows)}).scalars()
            return set(found)

        stored = self.database.read(stored_names, on_primary=True) if users else set()
        created = frozenset(rows.keys() - stored)
        if not stored:
            return Plan(rows, Comparison(created, frozenset()))

        def compare(conn: Connection) -> Comparison:
            bulk = BulkUsers(conn)
            bulk.copy(rows[name] for name in sorted(stored))
            return bulk.compare()

        found = self.database.write(compare)
        return Plan(rows, Comparison(created | found.created, found.updated))

    def write(self, plan: Plan) -> None:
        """Write what ``plan`` found changed, announced to every read cache; inside a
        batch, in the batch's transaction."""
        comparison = plan.comparison
        names = sorted(comparison.created | comparison.updated)
        if not names:
            return

        def write(conn: Connection) -> None:
            bulk = BulkUsers(conn)
            bulk.copy((plan.rows[name] for name in names), comparison)
            bulk.write(comparison)
            publish_change(conn, CHANGE_GROUP, None)

        try:
            self.database.write(write)
        finally:
            # Whatever the outcome, this process must not serve what it had
            # cached of these users: the change may have committed.
            self._changed()
