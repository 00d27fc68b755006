"""Declarative models for Omejdn's database layout, and the configuration table factory.

The layout is a compatibility contract with Omejdn's Ruby plugin: every table
and column name is theirs, so a database can be shared in both directions. We
add what the original lacks — primary keys, CHECK constraints, JSONB — with
stable constraint names from the metadata's naming convention, so migrations
can refer to them.

The models are what they are used for: the schema's definition and Alembic's
autogenerate target (tests compare them with what the migrations build). The
repositories run Core statements against their tables, hand-built for one
round trip per point read, so no ORM relationship is declared that only tests
would exercise.

``attributes`` has a polymorphic owner (``type`` + ``identifier``) instead of a
foreign key, because one table serves users and clients. The cost, as with any
generic association: the database cannot enforce that the owner exists, so
deleting a user or client must delete its attributes in the same transaction
(the repositories do).

``configuration_<section>`` tables are created at run time, one per section,
and are deliberately not part of :data:`metadata`: Alembic owns only the four
fixed tables and must never try to drop a section it does not know.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from omejdn_pg.keys.states import KEY_STATES
from omejdn_pg.names import validate_section_name as validate_section_name

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

USER_OWNER: Final = "user"
CLIENT_OWNER: Final = "client"
SECRET_KEY: Final = "sk"  # noqa: S105 - the row type, not a secret
CERTIFICATES: Final = "certs"
EXTRA_SECRET_KEY: Final = "extra_sk"  # noqa: S105 - the row type, not a secret
EXTRA_CERTIFICATES: Final = "extra_certs"
KEY_ROW_TYPES: Final = (SECRET_KEY, CERTIFICATES, EXTRA_SECRET_KEY, EXTRA_CERTIFICATES)
CLIENT_CERTIFICATE_TARGET_TYPE: Final = "clients"


def _in(column: str, allowed: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in allowed)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


metadata: Final = Base.metadata


class AttributeRecord(Base):
    """One attribute of a user or a client; the owner is ``(type, identifier)``."""

    __tablename__ = "attributes"
    __table_args__ = (CheckConstraint(_in("type", (USER_OWNER, CLIENT_OWNER)), name="type"),)

    type: Mapped[str] = mapped_column(Text, primary_key=True)
    """The owner's kind: ``user`` or ``client``."""
    identifier: Mapped[str] = mapped_column(Text, primary_key=True)
    """The owner's username or client_id."""
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB(none_as_null=False), nullable=False)
    """Any JSON document; Omejdn's Ruby plugin stores the same as JSON text."""
    ordinal: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    """The attribute's place among its owner's, as the caller gave them; a writer that
    does not set it appends."""


class UserRecord(Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(Text, primary_key=True)
    password: Mapped[str | None] = mapped_column(Text)
    """A hash in modular crypt format, never plaintext; NULL for external users."""
    extern: Mapped[str | None] = mapped_column(Text)
    """The external identity provider that vouches for this user, if any."""
    consent: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    """Scopes the user has consented to, per client. Not stored by the Ruby plugin."""
    ordinal: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    """Creation order, which USER_GET_ALL lists in (as Omejdn's own user store)."""

    __table_args__ = (Index("ix_users_ordinal", "ordinal", unique=True),)


class ClientFieldRecord(Base):
    """One metadata field of a client: a client is all rows sharing its client_id."""

    __tablename__ = "clients"

    client_id: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[Any] = mapped_column(JSONB(none_as_null=False), nullable=False)
    ordinal: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    """Creation order: a client's place among clients is the smallest of its rows'."""


class KeyRecord(Base):
    """One key of a target's key set: its private (or public) key, or its chain.

    A key is one or two rows sharing ``(target_type, target, kid)``. The first
    key of the set — the one that signs — is stored as ``sk``/``certs``, the
    rows Omejdn's Ruby plugin reads; every further key as ``extra_sk`` /
    ``extra_certs``, which it ignores. Both rows of a key carry the same
    descriptor and lifecycle columns.
    """

    __tablename__ = "keys"
    __table_args__ = (
        CheckConstraint(_in("type", KEY_ROW_TYPES), name="type"),
        CheckConstraint(_in("state", KEY_STATES), name="state"),
    )

    target_type: Mapped[str] = mapped_column(Text, primary_key=True)
    target: Mapped[str] = mapped_column(Text, primary_key=True)
    kid: Mapped[str] = mapped_column(Text, primary_key=True, server_default="")
    """The key's ``kid``; ``''`` on rows the Ruby plugin wrote (the RFC 7638 thumbprint then)."""
    type: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    """PEM: a private (or public-only) key for ``sk``; PEM certificates joined
    by ``_`` for ``certs``, the Ruby plugin's separator."""
    params: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    """The JWK descriptor without the key members, ``kid`` and the chain (``use``, ``alg``, ...)."""
    state: Mapped[str] = mapped_column(Text, nullable=False, server_default="active")
    position: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    """Order of the key in its set."""
    created_at: Mapped[datetime.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    activate_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    """When a ``next`` key becomes active."""
    retired_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    destroy_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True))
    """When a retired key stops being published and is deleted."""


# --- configuration_<section> tables -------------------------------------------

SECTION_PREFIX: Final = "configuration_"


def section_table_name(section: str) -> str:
    return SECTION_PREFIX + validate_section_name(section)


def is_section_table(table_name: str) -> bool:
    return table_name.startswith(SECTION_PREFIX)


def dict_section_table(section: str, table_metadata: MetaData | None = None) -> Table:
    """A section whose data is a mapping: one row per top-level key."""
    return Table(
        section_table_name(section),
        table_metadata
        if table_metadata is not None
        else MetaData(naming_convention=NAMING_CONVENTION),
        Column("key", Text, primary_key=True),
        Column("value", JSONB(none_as_null=False), nullable=False),
    )


def list_section_table(section: str, table_metadata: MetaData | None = None) -> Table:
    """A section whose data is a list: one row per element, ordered by ``position``."""
    return Table(
        section_table_name(section),
        table_metadata
        if table_metadata is not None
        else MetaData(naming_convention=NAMING_CONVENTION),
        Column("position", BigInteger, Identity(always=True), primary_key=True),
        Column("item", JSONB(none_as_null=False), nullable=False),
    )


# --- the read cache's durable change counters ---------------------------------

CHANGE_GROUPS: Final = ("config", "keys", "client", "user")
"""The handler groups whose changes are counted (and cached reads invalidated)."""


class ChangeCounterRecord(Base):
    """How far each writing session's committed changes of a handler group went: the read
    cache's durable change counters, one row per (group, session).

    Only ``omejdn_pg_count()`` (revision 0005, SECURITY DEFINER) writes them: once
    per transaction and group it sets ``counter`` to the next value of
    ``omejdn_pg_change_seq``, remembers the previous one in ``prior`` and sends
    ``NOTIFY omejdn_pg_changes`` naming the keys with ``writer/prior/counter``.
    A session runs one transaction at a time and no other session touches its
    row, so each row's values rise in commit order while writers of one group
    share no lock; a listener that polls a row whose chain of notices it cannot
    follow knows it missed a change. ``xact`` and ``announced`` say what the
    row's last transaction announced (NULL: the whole group), so a change the
    same transaction already announced is not announced again by the triggers.
    """

    __tablename__ = "omejdn_pg_changes"
    __table_args__ = (CheckConstraint(_in("name", CHANGE_GROUPS), name="name"),)

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    """The handler group: ``config``, ``keys``, ``client`` or ``user``."""
    writer: Mapped[int] = mapped_column(Integer, primary_key=True)
    """The writing session's backend pid (unique among live sessions)."""
    counter: Mapped[int] = mapped_column(BigInteger, nullable=False)
    prior: Mapped[int | None] = mapped_column(BigInteger)
    """The row's counter before its last counted transaction; NULL for a new row."""
    xact: Mapped[int] = mapped_column(BigInteger, nullable=False)
    """The last counted transaction's id (``pg_current_xact_id()``)."""
    announced: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    """Keys that transaction announced, encoded; NULL: the whole group."""
    changed_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    """When the last counted transaction announced (shortly before its commit)."""
