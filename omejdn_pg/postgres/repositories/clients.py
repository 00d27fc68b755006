"""Clients: metadata rows, ``attributes`` rows of type ``client`` and a certificate.

In Omejdn's layout a client is not a row but a set of rows — one ``clients``
row per metadata field, ``client_id`` included — so a point read folds them
into one jsonb object with ``jsonb_object_agg`` and adds the attributes with a
correlated subquery: one statement, one round trip. A full listing is the same
statement grouped over every client: one statement whatever their number.

Because a client is many rows, there is no single row to lock, and a client
that does not exist yet has none at all. Writers of one client therefore take
a transaction-scoped advisory lock on its id first (:func:`lock_for_update`),
then check for existence and replace the rows. The cost: a writer that
bypasses the lock — Omejdn's Ruby plugin, sharing the database — is not
serialized with ours; the primary keys still stop it from creating
duplicates, and we report that as AlreadyExists.

``backend`` is where a client lives, not what it is: it is never written as a
metadata row, and one that the Ruby plugin persisted is dropped on read.

The certificate a client authenticates with (mutual TLS) is a ``keys`` row
(target_type ``clients``, target = client_id, type ``certs``) and goes with
the client when it is deleted, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, cast

import psycopg
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import (
    Connection,
    Row,
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
from sqlalchemy.dialects.postgresql import insert as pg_insert

from omejdn_pg.entities import Client, load_certificate_chain
from omejdn_pg.errors import AlreadyExists, InvalidKeyMaterial, InvalidValue, NotFound
from omejdn_pg.postgres.repositories.attributes import OwnedAttributes, checked_attributes
from omejdn_pg.postgres.repositories.common import (
    check_json,
    check_text,
    json_column,
    lock_for_update,
    storable_text,
)
from omejdn_pg.postgres.schema import (
    CERTIFICATES,
    CLIENT_CERTIFICATE_TARGET_TYPE,
    CLIENT_OWNER,
    ClientFieldRecord,
    KeyRecord,
)
from omejdn_pg.settings import BACKEND_NAME

_clients: Final = cast(Table, ClientFieldRecord.__table__)
_ATTRIBUTES: Final = OwnedAttributes(CLIENT_OWNER, identifier_bind="id")
_keys: Final = cast(Table, KeyRecord.__table__)

LOCK_KIND: Final = "client"
_NOT_METADATA: Final = "backend"


def _select_clients() -> Select[Any]:
    """One row per client: its metadata and its attributes (NULL if none) as jsonb objects."""
    return select(
        _clients.c.client_id,
        func.jsonb_object_agg(_clients.c.key, json_column(_clients.c.value), type_=JSONB).label(
            "metadata"
        ),
        _ATTRIBUTES.folded(_clients.c.client_id).label("attributes"),
    ).group_by(_clients.c.client_id)


_GET: Final = _select_clients().where(_clients.c.client_id == bindparam("id"))
_ALL: Final = _select_clients().order_by(_clients.c.client_id)

_EXISTS: Final = select(exists().where(_clients.c.client_id == bindparam("id")))
_DELETE_METADATA: Final = (
    delete(_clients).where(_clients.c.client_id == bindparam("id")).returning(_clients.c.key)
)
_each_field = func.jsonb_each(bindparam("metadata_doc", type_=JSONB)).table_valued(
    column("key", Text), column("value", JSONB)
)
_INSERT_METADATA: Final = insert(_clients).from_select(
    ["client_id", "key", "value"],
    select(bindparam("id", type_=Text), _each_field.c.key, _each_field.c.value),
)

_certificate_row = (
    (_keys.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE)
    & (_keys.c.target == bindparam("id"))
    & (_keys.c.type == CERTIFICATES)
)
_GET_CERTIFICATE: Final = select(_keys.c.value).where(_certificate_row)
_DELETE_CERTIFICATE: Final = delete(_keys).where(_certificate_row)
_upsert = pg_insert(_keys).values(
    target_type=CLIENT_CERTIFICATE_TARGET_TYPE,
    target=bindparam("id"),
    type=CERTIFICATES,
    value=bindparam("pem"),
)
_SET_CERTIFICATE: Final = _upsert.on_conflict_do_update(
    index_elements=[_keys.c.target_type, _keys.c.target, _keys.c.type],
    set_={"value": _upsert.excluded.value},
)


class ClientRepository:
    """Clients on one connection; the caller owns the transaction around every call."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # --- reads -------------------------------------------------------------------

    def get(self, client_id: str) -> Client | None:
        """The client, or None; one statement (none for an id nothing can be stored under)."""
        if not storable_text(client_id):
            return None
        row = self.conn.execute(_GET, {"id": client_id}).one_or_none()
        return None if row is None else _to_client(row)

    def all(self) -> list[Client]:
        """Every client, ordered by client_id; one statement whatever their number."""
        return [_to_client(row) for row in self.conn.execute(_ALL)]

    # --- writes ------------------------------------------------------------------

    def create(self, client: Client) -> None:
        """Store a new client; AlreadyExists if its client_id is taken.

        Attribute rows left behind without a client (the Ruby plugin deletes in
        several transactions) are replaced, not inherited.
        """
        values = _checked(client)
        lock_for_update(self.conn, LOCK_KIND, values["id"])
        if self.conn.execute(_EXISTS, {"id": values["id"]}).scalar_one():
            raise AlreadyExists(f"client {values['id']!r} exists already")
        try:
            self.conn.execute(
                _INSERT_METADATA, {"id": values["id"], "metadata_doc": values["metadata_doc"]}
            )
            _ATTRIBUTES.replace(self.conn, values["id"], values["attribute_doc"])
        except sa_exc.IntegrityError as error:
            if not isinstance(error.orig, psycopg.errors.UniqueViolation):
                raise
            # Only a writer that ignores our lock (e.g. the Ruby plugin) gets here.
            raise AlreadyExists(f"client {values['id']!r} exists already") from error

    def update(self, client: Client) -> None:
        """Replace the metadata and attributes; NotFound if there is no such client."""
        values = _checked(client)
        lock_for_update(self.conn, LOCK_KIND, values["id"])
        if self.conn.execute(_DELETE_METADATA, {"id": values["id"]}).first() is None:
            raise NotFound(f"client {values['id']!r} does not exist")
        self.conn.execute(
            _INSERT_METADATA, {"id": values["id"], "metadata_doc": values["metadata_doc"]}
        )
        _ATTRIBUTES.replace(self.conn, values["id"], values["attribute_doc"])

    def delete(self, client_id: str) -> bool:
        """Delete the client, its attributes and its certificate; False if there was no such client.

        Attributes and certificates of an id with no metadata rows are left
        alone: this backend acts only on clients it holds, and the keys table
        may serve clients of another backend.
        """
        check_text(client_id, "client_id")
        lock_for_update(self.conn, LOCK_KIND, client_id)
        if self.conn.execute(_DELETE_METADATA, {"id": client_id}).first() is None:
            return False
        _ATTRIBUTES.remove(self.conn, client_id)
        self.conn.execute(_DELETE_CERTIFICATE, {"id": client_id})
        return True

    # --- certificate -------------------------------------------------------------

    def get_certificate(self, client_id: str) -> x509.Certificate | None:
        """The client's certificate (the first of a stored chain), or None."""
        if not storable_text(client_id):
            return None
        pem = self.conn.execute(_GET_CERTIFICATE, {"id": client_id}).scalar_one_or_none()
        if not pem:
            return None
        chain = load_certificate_chain(pem, f"certificate of client {client_id!r}")
        return chain[0] if chain else None

    def set_certificate(self, client_id: str, certificate: x509.Certificate | None) -> None:
        """Store (replace) the client's certificate as PEM; None deletes it.

        The client's lock is taken so that a certificate cannot slip in after
        a concurrent delete of the client has removed the old one.
        """
        check_text(client_id, "client_id")
        if certificate is not None and not isinstance(certificate, x509.Certificate):
            raise InvalidKeyMaterial(
                f"certificate of client {client_id!r}: expected an X.509 certificate, "
                f"got {type(certificate).__name__}"
            )
        lock_for_update(self.conn, LOCK_KIND, client_id)
        if certificate is None:
            self.conn.execute(_DELETE_CERTIFICATE, {"id": client_id})
            return
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.conn.execute(_SET_CERTIFICATE, {"id": client_id, "pem": pem})


def _checked(client: Client) -> dict[str, Any]:
    """Bind values for ``client``, every one checked before any SQL is sent."""
    if not isinstance(client.metadata, Mapping):
        raise InvalidValue(
            f"client metadata must be a mapping, got {type(client.metadata).__name__}"
        )
    client_id = check_text(client.metadata.get("client_id"), "client_id")
    who = f"client {client_id!r}"
    metadata = {k: v for k, v in client.metadata.items() if k != _NOT_METADATA}
    for key, value in metadata.items():
        check_text(key, f"{who}: metadata field name {key!r}")
        check_json(value, f"{who}: metadata.{key}")
    attributes = checked_attributes(client.attributes, who)
    return {"id": client_id, "metadata_doc": metadata, "attribute_doc": attributes}


def _to_client(row: Row[Any]) -> Client:
    fields: dict[str, Any] = dict(row.metadata or {})
    fields.pop(_NOT_METADATA, None)
    fields.pop("client_id", None)
    # The key column is the authority on which client this is; client_id first
    # keeps exported YAML readable.
    return Client(
        metadata={"client_id": row.client_id, **fields},
        attributes=dict(row.attributes or {}),
        backend=BACKEND_NAME,
    )
