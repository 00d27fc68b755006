"""Clients: metadata rows, ``attributes`` rows of type ``client`` and a key set.

In Omejdn's layout a client is not a row but a set of rows — one ``clients``
row per metadata field, ``client_id`` included — so a point read folds them
into one json object, fields by name (:func:`metadata_fields`), and adds the
attributes with a correlated subquery: one statement, one round trip. A full
listing is one statement whatever the number of clients, streamed (see
:func:`all_clients`).

Because a client is many rows, there is no single row to lock, and a client
that does not exist yet has none at all. Writers of one client therefore take
a transaction-scoped advisory lock on its id first (:func:`lock_for_update`),
then check for existence and replace the rows. The cost: a writer that
bypasses the lock — Omejdn's Ruby plugin, sharing the database — is not
serialized with ours; the primary keys still stop it from creating
duplicates, and we report that as AlreadyExists.

``backend`` is where a client lives, not what it is: it is never written as a
metadata row, and one that the Ruby plugin persisted is dropped on read.

A client's keys (``metadata['jwks']`` in Omejdn's current core, a mutual-TLS
certificate in the core before it) are the key set of target
``clients/<client_id>`` in ``keys``, as Omejdn's own client store keeps them.
Reads aggregate them in the same statement (so listing every client is still
one statement), writes take ``jwks`` out of the metadata and store it as that
set in the same transaction, and a delete takes the set with the client. A
client whose ``jwks`` the Ruby plugin stored as a plain metadata row keeps it
as it is until its next write moves it into ``keys``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import psycopg
from cryptography import x509
from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    Table,
    Text,
    bindparam,
    column,
    delete,
    exists,
    func,
    insert,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB

from omejdn_pg import collector
from omejdn_pg.client_metadata import check_client_metadata
from omejdn_pg.entities import Client
from omejdn_pg.errors import AlreadyExists, InvalidKeyMaterial, InvalidValue, NotFound
from omejdn_pg.json_values import check_json, check_text, storable_text
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.states import DATES
from omejdn_pg.names import check_file_name
from omejdn_pg.postgres.database.direct import execute
from omejdn_pg.postgres.repositories.attributes import OwnedAttributes, checked_attributes
from omejdn_pg.postgres.repositories.client_fields import NOT_METADATA, metadata_fields
from omejdn_pg.postgres.repositories.common import (
    ConnectionReader,
    Reader,
    lock_for_update,
    with_documents,
)
from omejdn_pg.postgres.repositories.jwks_answers import JwksAnswers
from omejdn_pg.postgres.repositories.key_mapping import KEY_COLUMNS, keys_from_rows
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.postgres.schema import (
    CLIENT_CERTIFICATE_TARGET_TYPE,
    CLIENT_OWNER,
    ClientFieldRecord,
    KeyRecord,
)
from omejdn_pg.sealing import Keyring
from omejdn_pg.settings.backend import BACKEND_NAME

_clients: Final = cast(Table, ClientFieldRecord.__table__)
_ATTRIBUTES: Final = OwnedAttributes(CLIENT_OWNER, identifier_bind="id")
_keys: Final = cast(Table, KeyRecord.__table__)

LOCK_KIND: Final = "client"
JWKS_FIELD: Final = "jwks"


_KEY_FIELDS: Final = tuple(part for column in KEY_COLUMNS for part in (column.name, column))
"""A key row's columns as ``json_build_object`` arguments: each name, then its column."""


def _folded_keys(client_id: Any) -> Any:
    """The client's key rows as one jsonb array (NULL if none): a correlated subquery."""
    row = func.jsonb_build_object(*_KEY_FIELDS)
    return (
        select(func.jsonb_agg(row, type_=JSONB))
        .where(
            _keys.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE,
            _keys.c.target == client_id,
        )
        .scalar_subquery()
    )


def _select_clients() -> Select[Any]:
    """One row per client: its fields, attributes and key rows (NULL if none) as JSON."""
    return select(
        _clients.c.client_id,
        metadata_fields().label("metadata"),
        _ATTRIBUTES.folded(_clients.c.client_id).label("attributes"),
        _folded_keys(_clients.c.client_id).label("keys"),
    ).group_by(_clients.c.client_id)


def _listing() -> Select[Any]:
    """Every client as text JSON columns with its place in creation order, by client_id.

    Each part is grouped along its primary key (metadata, attributes, key rows)
    and merge-joined on client_id, so clients stream out while the server
    still folds the rest, and the parser and :func:`all_clients` work on the
    first ones meanwhile. The creation order (a client's place is the
    smallest ``ordinal`` of its rows) is therefore left to the caller: a sort
    in SQL would hold back every row until the last client was folded.
    """
    metadata = (
        select(
            _clients.c.client_id,
            func.min(_clients.c.ordinal).label("place"),
            metadata_fields().cast(Text).label("metadata"),
        )
        .group_by(_clients.c.client_id)
        .subquery("metadata")
    )
    attributes = _ATTRIBUTES.per_owner()
    key_row = func.json_build_object(*_KEY_FIELDS)
    keys = (
        select(_keys.c.target, func.json_agg(key_row).cast(Text).label("keys"))
        .where(_keys.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE)
        .group_by(_keys.c.target)
        .subquery("key_rows")
    )
    return (
        select(
            metadata.c.client_id,
            metadata.c.place,
            metadata.c.metadata,
            attributes.c.attributes,
            keys.c["keys"],
        )
        .select_from(
            metadata.outerjoin(
                attributes, attributes.c.identifier == metadata.c.client_id
            ).outerjoin(keys, keys.c.target == metadata.c.client_id)
        )
        .order_by(metadata.c.client_id)
    )


_GET: Final = _select_clients().where(_clients.c.client_id == bindparam("id"))
_ALL: Final = _listing()

_EXISTS: Final = select(exists().where(_clients.c.client_id == bindparam("id")))
_DELETE_METADATA: Final = (
    delete(_clients)
    .where(_clients.c.client_id == bindparam("id"))
    .returning(_clients.c.key, _clients.c.ordinal)
)
_each_field = func.jsonb_each(bindparam("metadata_doc", type_=JSONB)).table_valued(
    column("key", Text), column("value", JSONB)
)
_INSERT_METADATA: Final = insert(_clients).from_select(
    ["client_id", "key", "value"],
    select(bindparam("id", type_=Text), _each_field.c.key, _each_field.c.value),
)
# An update writes the rows back in the client's place (see 0006).
_REINSERT_METADATA: Final = insert(_clients).from_select(
    ["client_id", "key", "value", "ordinal"],
    select(
        bindparam("id", type_=Text),
        _each_field.c.key,
        _each_field.c.value,
        bindparam("ordinal", type_=BigInteger),
    ),
)

_DELETE_KEYS: Final = delete(_keys).where(
    _keys.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE, _keys.c.target == bindparam("id")
)


class ClientRepository:
    """Clients on one connection; the caller owns the transaction around every call.

    ``jwks`` selects Omejdn's current client store, where ``metadata['jwks']``
    is the client's key set; without it (hosts of the core before JWKS) a
    ``jwks`` field is plain metadata and the keys are reached only as the
    client's certificate.
    """

    def __init__(
        self, conn: Connection, *, jwks: bool = True, keyring: Keyring | None = None
    ) -> None:
        self.conn = conn
        self.jwks = jwks
        self.keys = KeyRepository(conn, keyring)

    # --- reads -------------------------------------------------------------------

    def get(self, client_id: str) -> Client | None:
        """The client, or None; one statement (none for an id nothing can be stored under)."""
        return find_client(
            ConnectionReader(self.conn), client_id, jwks=self.jwks, keyring=self.keys.keyring
        )

    def all(self) -> list[Client]:
        """Every client, in creation order; one statement whatever their number."""
        return all_clients(ConnectionReader(self.conn), jwks=self.jwks, keyring=self.keys.keyring)

    # --- writes ------------------------------------------------------------------

    def create(self, client: Client) -> None:
        """Store a new client; AlreadyExists if its client_id is taken.

        Attribute rows left behind without a client (the Ruby plugin deletes in
        several transactions) are replaced, not inherited.
        """
        values = self._checked(client)
        lock_for_update(self.conn, LOCK_KIND, values["id"])
        taken = execute(self.conn, _EXISTS, {"id": values["id"]}).fetchone()
        if taken is not None and taken[0]:
            raise AlreadyExists(f"client {values['id']!r} exists already")
        try:
            execute(
                self.conn,
                _INSERT_METADATA,
                {"id": values["id"], "metadata_doc": values["metadata_doc"]},
            )
            _ATTRIBUTES.replace(self.conn, values["id"], values["attribute_doc"])
            self._store_keys(values)
        except sa_exc.IntegrityError as error:
            if not isinstance(error.orig, psycopg.errors.UniqueViolation):
                raise
            # Only a writer that ignores our lock (e.g. the Ruby plugin) gets here.
            raise AlreadyExists(f"client {values['id']!r} exists already") from error

    def update(self, client: Client) -> None:
        """Replace the metadata and attributes; NotFound if there is no such client."""
        values = self._checked(client)
        lock_for_update(self.conn, LOCK_KIND, values["id"])
        deleted = execute(self.conn, _DELETE_METADATA, {"id": values["id"]}).fetchall()
        if not deleted:
            raise NotFound(f"client {values['id']!r} does not exist")
        execute(
            self.conn,
            _REINSERT_METADATA,
            {
                "id": values["id"],
                "metadata_doc": values["metadata_doc"],
                "ordinal": min(row.ordinal for row in deleted),
            },
        )
        _ATTRIBUTES.replace(self.conn, values["id"], values["attribute_doc"])
        self._store_keys(values)

    def _store_keys(self, values: Mapping[str, Any]) -> None:
        # As Omejdn's client store: the metadata is the whole client, so a
        # client written without ``jwks`` has no keys.
        if self.jwks:
            self.keys.store(
                CLIENT_CERTIFICATE_TARGET_TYPE, values["id"], values["keys"], locked=True
            )

    def delete(self, client_id: str) -> bool:
        """Delete the client, its attributes and its keys; False if there was no such client.

        Attributes and certificates of an id with no metadata rows are left
        alone: this backend acts only on clients it holds, and the keys table
        may serve clients of another backend.
        """
        check_text(client_id, "client_id")
        lock_for_update(self.conn, LOCK_KIND, client_id)
        if execute(self.conn, _DELETE_METADATA, {"id": client_id}).fetchone() is None:
            return False
        _ATTRIBUTES.remove(self.conn, client_id)
        execute(self.conn, _DELETE_KEYS, {"id": client_id})
        return True

    # --- certificate (the key events before JWKS) ---------------------------------

    def get_certificate(self, client_id: str) -> x509.Certificate | None:
        """The client's certificate: the first of its signing key's chain, or None."""
        if not storable_text(client_id):
            return None
        keys = self.keys.load(CLIENT_CERTIFICATE_TARGET_TYPE, client_id)
        chains = [key.certificates for key in keys if key.certificates]
        return chains[0][0] if chains else None

    def set_certificate(self, client_id: str, certificate: x509.Certificate | None) -> None:
        """Make ``certificate`` the client's only key; None deletes its keys.

        The client's lock is taken (by the key repository, for target type
        ``clients``) so that a certificate cannot slip in after a concurrent
        delete of the client has removed the old one.
        """
        check_text(client_id, "client_id")
        if certificate is not None and not isinstance(certificate, x509.Certificate):
            raise InvalidKeyMaterial(
                f"certificate of client {client_id!r}: expected an X.509 certificate, "
                f"got {type(certificate).__name__}"
            )
        keys = []
        if certificate is not None:
            public = certificate.public_key()
            keys = [Key(public_key=public, certificates=[certificate])]  # type: ignore[arg-type]
        self.keys.store(CLIENT_CERTIFICATE_TARGET_TYPE, client_id, keys)

    def _checked(self, client: Client) -> dict[str, Any]:
        """Bind values for ``client``, every one checked before any SQL is sent."""
        if not isinstance(client.metadata, Mapping):
            raise InvalidValue(
                f"client metadata must be a mapping, got {type(client.metadata).__name__}"
            )
        client_id = check_client_id(client.metadata.get("client_id"))
        who = f"client {client_id!r}"
        metadata = {k: v for k, v in client.metadata.items() if k != NOT_METADATA}
        keys = KeySet()
        if self.jwks:
            keys = KeySet.from_jwks(metadata.pop(JWKS_FIELD, None), what=f"{who}: jwks")
        for key, value in metadata.items():
            check_text(key, f"{who}: metadata field name {key!r}")
            check_json(value, f"{who}: metadata.{key}")
        check_client_metadata(metadata, who)
        attributes = checked_attributes(client.attributes, who)
        return {
            "id": client_id,
            "metadata_doc": metadata,
            "attribute_doc": attributes,
            "keys": keys,
        }


# --- reads, on any Reader (a connection, or the primary's direct read path) --------


def find_client(
    reader: Reader,
    client_id: str,
    *,
    jwks: bool = True,
    keyring: Keyring | None = None,
    answers: JwksAnswers | None = None,
) -> Client | None:
    """The client, or None; one statement (none for an id nothing can be stored under).

    ``jwks``: the client's key set is its ``jwks`` metadata (Omejdn's current core).
    ``answers``: where that set is kept, converted once per stored content of its keys.
    """
    if not storable_text(client_id):
        return None
    rows = reader.rows(_GET, {"id": client_id})
    if not rows:
        return None
    row = rows[0]
    return _assembled(row.client_id, row.metadata, row.attributes, row.keys, jwks, keyring, answers)


def all_clients(
    reader: Reader,
    *,
    jwks: bool = True,
    keyring: Keyring | None = None,
    answers: JwksAnswers | None = None,
) -> list[Client]:
    """Every client, in creation order; one statement whatever their number."""
    with collector.paused():
        found: list[Client] = []
        places: list[int] = []
        for row, (fields, attributes, key_rows) in with_documents(reader.stream(_ALL), 2, "client"):
            places.append(row[1])
            found.append(_assembled(row[0], fields, attributes, key_rows, jwks, keyring, answers))
        # Positions rather than (place, client) pairs: nothing more for the
        # cyclic collector to walk once the pause ends.
        return [found[index] for index in sorted(range(len(found)), key=places.__getitem__)]


def _assembled(
    client_id: str,
    fields: Mapping[str, Any] | None,
    attributes: dict[str, Any] | None,
    key_rows: Sequence[Mapping[str, Any]] | None,
    jwks: bool,
    keyring: Keyring | None,
    answers: JwksAnswers | None,
) -> Client:
    """The client from its parsed documents; ``fields`` holds neither client_id nor backend.

    The key column is the authority on which client this is; client_id first
    keeps exported YAML readable. The documents are the caller's own (freshly
    parsed), so they are not copied.
    """
    metadata: dict[str, Any] = {"client_id": client_id, **(fields or {})}
    if jwks and key_rows:

        def convert() -> dict[str, Any]:
            rows = (_KeyRow(row) for row in key_rows)
            keys = keys_from_rows(CLIENT_CERTIFICATE_TARGET_TYPE, client_id, rows, keyring)
            return keys.to_jwks(private=False)

        metadata[JWKS_FIELD] = (
            answers.client(client_id, key_rows, keyring, convert) if answers else convert()
        )
    return Client(metadata=metadata, attributes=attributes or {}, backend=BACKEND_NAME)


def check_client_id(value: object) -> str:
    """A client id is also a key target, so it must be usable as a file name."""
    return check_file_name(check_text(value, "client_id"), "client_id")


class _KeyRow:
    """A key row folded into jsonb, read like a result row (timestamps parsed back)."""

    _DATES: Final = frozenset(DATES)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(name)
        if name in self._DATES and isinstance(value, str):
            return datetime.datetime.fromisoformat(value)
        return value
