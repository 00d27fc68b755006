"""Users: one ``users`` row plus ``attributes`` rows of type ``user``, one aggregate.

Reads are built for the login path, which is hot: a point read is a single
statement whose attributes are folded into one jsonb object by a correlated
subquery (an index range scan on the attributes' primary key), so it costs one
round trip and the same SQL text every time, which psycopg then prepares. A
full listing is one statement whatever the number of users: users merge-joined
with their attributes grouped per user, streamed (see :func:`all_users`).

Writes lock the user row first and touch attributes only afterwards, each in a
statement of its own. That order is what makes concurrent writers safe under
READ COMMITTED: a writer that waited for the row lock starts its next
statement with a snapshot in which the previous writer's attributes are
visible, so it replaces them all instead of leaving a mixture. Attributes are
sent as one json document and unpacked with ``json_each`` in the server, in
the caller's order (see :mod:`omejdn_pg.postgres.repositories.attributes`), so
a write also costs a fixed number of statements, and the value column may be
JSONB (ours) or TEXT (Omejdn's Ruby plugin): jsonb assigns to either.

Passwords are stored only as hashes. A plaintext password handed to
:meth:`UserRepository.create` or :meth:`UserRepository.update` is refused
rather than hashed silently, because a caller that confuses the two has a bug
worth seeing; :meth:`UserRepository.set_password` is the way to store a new
password. Messages never quote a password or a hash.

jsonb keeps numbers as exact decimals and prints integral values without a
fraction, so a float such as ``1e16`` comes back as the int ``10**16``: equal
in value, not in Python type. Key order within objects is not kept either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, cast

import psycopg
from sqlalchemy import (
    Connection,
    Select,
    Table,
    Text,
    bindparam,
    delete,
    exists,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSON, JSONB

from omejdn_pg import collector
from omejdn_pg.entities import User
from omejdn_pg.errors import AlreadyExists, InvalidValue, NotFound, PasswordRejected
from omejdn_pg.json_values import MAX_INT_BITS, check_json, check_text, storable_text
from omejdn_pg.passwords import PasswordPolicy, cost_refusal, default_policy
from omejdn_pg.postgres.database.direct import execute, together
from omejdn_pg.postgres.repositories.attributes import OwnedAttributes, checked_attributes
from omejdn_pg.postgres.repositories.common import (
    EXTERN_TRUE,
    ConnectionReader,
    Reader,
    json_column,
    read_extern,
    user_from_row,
    with_documents,
)
from omejdn_pg.postgres.schema import USER_OWNER, UserRecord
from omejdn_pg.settings.backend import BACKEND_NAME

_users: Final = cast(Table, UserRecord.__table__)
_ATTRIBUTES: Final = OwnedAttributes(USER_OWNER, identifier_bind="name")
_ATTRIBUTES_OF_A_USER: Final = OwnedAttributes(
    USER_OWNER,
    identifier_bind="name",
    only_if=exists().where(_users.c.username == bindparam("name", type_=Text)),
)
"""For an update, which sends them with the user's UPDATE, before its answer: the
rows of a name with no user stay as they are, whatever the caller does next."""


def _select_users() -> Select[Any]:
    """Every column of a user, its attributes folded into one json object in their order
    (NULL if none)."""
    return select(
        _users.c.username,
        _users.c.password,
        _users.c.extern,
        json_column(_users.c.consent).label("consent"),
        _ATTRIBUTES.folded(_users.c.username).label("attributes"),
    )


_GET: Final = _select_users().where(_users.c.username == bindparam("name"))


def _listing() -> Select[Any]:
    """Every user with its attributes as text JSON (NULL if none) and its place in
    creation order, by username.

    Creation order is what Omejdn's own user store (a YAML list) answers, and
    what its admin APIs show; :func:`all_users` puts the users in it. Both
    sides are read along their primary keys, so the plan is a merge join that
    emits each user as soon as its attributes are folded: the rows stream out
    while the server still folds the rest, and the parser takes a chunk's
    documents in one go meanwhile. Sorting by ``ordinal`` in SQL would hold
    every row back until the last user was folded. One statement, so one
    snapshot.
    """
    owned = _ATTRIBUTES.per_owner()
    return (
        select(
            _users.c.username,
            _users.c.password,
            _users.c.extern,
            _users.c.ordinal,
            json_column(_users.c.consent).cast(Text).label("consent"),
            owned.c.attributes,
        )
        .select_from(_users.outerjoin(owned, owned.c.identifier == _users.c.username))
        .order_by(_users.c.username)
    )


_ALL: Final = _listing()

# An UPDATE takes the row lock a SELECT ... FOR UPDATE would, and tells in the
# same round trip whether the user exists.
_UPDATE_USER: Final = (
    update(_users)
    .where(_users.c.username == bindparam("name"))
    .values(
        password=bindparam("password_hash"),
        extern=bindparam("extern_idp"),
        consent=bindparam("consent_doc", type_=JSONB),
    )
    .returning(_users.c.username)
)
# The sub-statements all depend on what the INSERT returned: nothing happens
# to attributes unless the user row was really created by this statement.
_CREATE_USER: Final = text(
    """
    WITH created AS (
        INSERT INTO users (username, password, extern, consent)
        VALUES (:name, :password_hash, :extern_idp, :consent_doc)
        ON CONFLICT (username) DO NOTHING
        RETURNING username
    ), orphaned AS (
        DELETE FROM attributes AS a USING created
        WHERE a.type = 'user' AND a.identifier = created.username
          AND NOT (CAST(:attribute_doc AS jsonb) ? a.key)
    ), added AS (
        INSERT INTO attributes (type, identifier, key, value, ordinal)
        SELECT 'user', created.username, e.key, CAST(e.value AS jsonb), e.ordinal
        FROM created,
             json_each(CAST(:attribute_doc AS json)) WITH ORDINALITY AS e(key, value, ordinal)
        ON CONFLICT (type, identifier, key)
        DO UPDATE SET value = EXCLUDED.value, ordinal = EXCLUDED.ordinal
    )
    SELECT username FROM created
    """
).bindparams(
    bindparam("consent_doc", type_=JSONB),
    bindparam("attribute_doc", type_=JSON),
)
_DELETE_USER: Final = (
    delete(_users).where(_users.c.username == bindparam("name")).returning(_users.c.username)
)
_SET_PASSWORD: Final = (
    update(_users)
    .where(_users.c.username == bindparam("name"))
    .values(password=bindparam("new_hash"))
    .returning(_users.c.username)
)
# Compare-and-set: a concurrent password change wins over an opportunistic rehash.
_REHASH_PASSWORD: Final = (
    update(_users)
    .where(_users.c.username == bindparam("name"))
    .where(_users.c.password == bindparam("old_hash"))
    .values(password=bindparam("new_hash"))
)
_GET_PASSWORD: Final = select(_users.c.password).where(_users.c.username == bindparam("name"))


class UserRepository:
    """Users on one connection; the caller owns the transaction around every call."""

    def __init__(self, conn: Connection, policy: PasswordPolicy | None = None) -> None:
        self.conn = conn
        self.policy = policy or default_policy()

    # --- reads -------------------------------------------------------------------

    def get(self, username: str) -> User | None:
        """The user, or None; one statement (none for a name nothing can be stored under)."""
        return find_user(ConnectionReader(self.conn), username)

    def all(self) -> list[User]:
        """Every user, in creation order; one statement whatever their number."""
        return all_users(ConnectionReader(self.conn))

    # --- writes ------------------------------------------------------------------

    def create(self, user: User) -> None:
        """Store a new user; AlreadyExists if the username is taken.

        One statement (an import creates thousands): the user row goes first
        with ON CONFLICT DO NOTHING, and the attribute rows are written only
        from what that INSERT returned, so a taken name is detected before any
        attribute is touched, and a concurrent create of the same name waits
        for the other transaction instead of failing with a duplicate key.
        Attribute rows left behind without a user (the Ruby plugin deletes in
        several transactions) are replaced, not inherited.
        """
        values = self._checked(user)
        try:
            created = execute(self.conn, _CREATE_USER, values).fetchone()
        except sa_exc.IntegrityError as error:
            if not isinstance(error.orig, psycopg.errors.UniqueViolation):
                raise
            # Only a writer that ignores our locks (e.g. the Ruby plugin) gets here.
            raise AlreadyExists(f"user {user.username!r} exists already") from error
        if created is None:
            raise AlreadyExists(f"user {user.username!r} exists already")

    def update(self, user: User) -> None:
        """Replace password, extern, consent and attributes; NotFound if there is no such user."""
        values = self._checked(user)
        with together(self.conn):
            updated = execute(self.conn, _UPDATE_USER, values)
            _ATTRIBUTES_OF_A_USER.replace(self.conn, values["name"], values["attribute_doc"])
        if updated.fetchone() is None:
            raise NotFound(f"user {user.username!r} does not exist")

    def delete(self, username: str) -> bool:
        """Delete the user and its attributes; False if there was no such user.

        Attribute rows of a name with no user row are left alone: this backend
        acts only on users it holds.
        """
        check_text(username, "username")
        if execute(self.conn, _DELETE_USER, {"name": username}).fetchone() is None:
            return False
        _ATTRIBUTES.remove(self.conn, username)
        return True

    # --- passwords ---------------------------------------------------------------

    def set_password(self, username: str, password: str) -> None:
        """Hash ``password`` under the policy and store it; NotFound if there is no such user."""
        check_text(username, "username")
        self.set_password_hash(username, self.policy.hash(password))

    def set_password_hash(self, username: str, new_hash: str) -> None:
        """Store an already computed hash; NotFound if there is no such user.

        Hashing costs a bcrypt round (a quarter of a second at cost 12); callers
        that do it before opening the transaction hold no connection meanwhile.
        """
        check_text(username, "username")
        if not self.policy.is_hash(new_hash):
            raise InvalidValue(f"user {username!r}: the new password is not a hash")
        refusal = cost_refusal(new_hash)
        if refusal is not None:
            raise PasswordRejected(f"user {username!r}: {refusal}")
        found = execute(
            self.conn, _SET_PASSWORD, {"name": username, "new_hash": new_hash}
        ).fetchone()
        if found is None:
            raise NotFound(f"user {username!r} does not exist")

    def stored_password(self, username: str) -> tuple[bool, str | None]:
        """``(exists, hash)`` of the user: one statement, for verifying outside any transaction."""
        return stored_password(ConnectionReader(self.conn), username)

    def replace_password_hash(self, username: str, old_hash: str, new_hash: str) -> bool:
        """Compare-and-set: replace ``old_hash`` only if it is still the stored one,
        so an upgrade after a login never undoes a password changed meanwhile."""
        result = execute(
            self.conn,
            _REHASH_PASSWORD,
            {"name": username, "old_hash": old_hash, "new_hash": new_hash},
        )
        return bool(result.rowcount)

    def verify_password(self, username: str, password: str) -> bool | None:
        """Whether ``password`` is the user's; None if there is no such user.

        On success, a hash weaker than the policy (another scheme, a lower
        bcrypt cost) is replaced in the same call, but only if the stored hash
        is still the one verified: a password changed meanwhile is not undone.
        """
        exists, stored = self.stored_password(username)
        if not exists:
            return None
        matches, replacement = self.policy.verify(password, stored)
        if matches and replacement is not None and stored is not None:
            self.replace_password_hash(username, stored, replacement)
        return matches

    # --- helpers -----------------------------------------------------------------

    def checked(self, user: User) -> dict[str, Any]:
        """What :meth:`create` and :meth:`update` would bind for ``user``, every value
        checked (the same errors); for writers of many users at once."""
        return self._checked(user)

    def _checked(self, user: User) -> dict[str, Any]:
        """Bind values for ``user``, every one checked before any SQL is sent."""
        username = check_text(user.username, "username")
        who = f"user {username!r}"
        password = user.password
        if password is not None and (
            not isinstance(password, str) or not self.policy.is_hash(password)
        ):
            # Never quote the value: it may well be a plaintext password.
            raise InvalidValue(
                f"{who}: password must be a bcrypt or argon2 hash, not plaintext; "
                "store a new password with set_password"
            )
        refusal = cost_refusal(password) if password is not None else None
        if refusal is not None:
            raise PasswordRejected(f"{who}: {refusal}")
        extern = EXTERN_TRUE if user.extern is True else user.extern
        if extern is not None:
            check_text(extern, f"{who}: extern")
        consent = user.consent if user.consent is not None else {}
        if not isinstance(consent, Mapping):
            raise InvalidValue(f"{who}: consent must be a mapping, got {type(consent).__name__}")
        if consent:
            check_json(consent, f"{who}: consent")
        attributes = _checked_attributes(user.attributes, who)
        return {
            "name": username,
            "password_hash": password,
            "extern_idp": extern,
            "consent_doc": dict(consent),
            "attribute_doc": attributes,
        }


def _checked_attributes(attributes: object, who: str) -> dict[str, Any]:
    """:func:`checked_attributes`' answer, quickly for the usual attributes (an import
    checks every user's): a dict of names and scalar values.

    Its names and string values are searched at once, as one text, for what
    PostgreSQL cannot store; any other value is checked in one list, a level
    deeper than alone. So it accepts nothing the check per name and value would
    refuse, and leaves to that check whatever it does not accept, which then
    names the attribute as it always has.
    """
    if type(attributes) is not dict or "" in attributes:
        return checked_attributes(attributes, who)
    if not attributes:
        return {}
    texts: list[Any] = list(attributes)
    others: list[Any] = []
    for value in attributes.values():
        kind = type(value)
        if kind is str:
            texts.append(value)
        elif (
            value is not None
            and kind is not bool
            and (kind is not int or value.bit_length() > MAX_INT_BITS)
        ):
            others.append(value)
    try:
        joined = "".join(texts)
    except TypeError:  # a name that is not a string
        return checked_attributes(attributes, who)
    # ASCII text holds no surrogate, and asking costs nothing (CPython knows).
    clean = "\x00" not in joined and (joined.isascii() or storable_text(joined))
    if clean and others:
        try:
            check_json(others, who)
        except InvalidValue:
            clean = False
    return dict(attributes) if clean else checked_attributes(attributes, who)


# --- reads, on any Reader (a connection, or the primary's direct read path) --------


def find_user(reader: Reader, username: str) -> User | None:
    """The user, or None; one statement (none for a name nothing can be stored under)."""
    if not storable_text(username):
        return None
    rows = reader.rows(_GET, {"name": username})
    return user_from_row(rows[0]) if rows else None


def all_users(reader: Reader) -> list[User]:
    """Every user, in creation order; one statement whatever their number."""
    with collector.paused():
        found: list[User] = []
        places: list[int] = []
        for row, (consent, attributes) in with_documents(reader.stream(_ALL), 4, "user"):
            places.append(row[3])
            found.append(
                User(
                    username=row[0],
                    password=row[1],
                    attributes=attributes or {},
                    extern=read_extern(row[2]),
                    consent=consent or {},
                    backend=BACKEND_NAME,
                )
            )
        # Positions rather than (place, user) pairs: nothing more for the
        # cyclic collector to walk once the pause ends.
        return [found[index] for index in sorted(range(len(found)), key=places.__getitem__)]


def stored_password(reader: Reader, username: str) -> tuple[bool, str | None]:
    """``(exists, hash)`` of the user: one statement, for verifying outside any transaction."""
    if not storable_text(username):
        return False, None
    rows = reader.rows(_GET_PASSWORD, {"name": username})
    return (True, rows[0].password) if rows else (False, None)
