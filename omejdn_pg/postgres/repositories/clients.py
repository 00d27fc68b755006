"""Clients: metadata rows, ``attributes`` rows of type ``client`` and a key set.

In Omejdn's layout a client is not a row but a set of rows — one ``clients``
row per metadata field, ``client_id`` included. Its reads, one statement each
(a point read, and a listing whatever the number of clients), are
:mod:`~omejdn_pg.postgres.repositories.client_reads`; this module writes.

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

from collections.abc import Callable, Mapping
from typing import Any, Final

import psycopg
from cryptography import x509
from sqlalchemy import (
    BigInteger,
    Connection,
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

from omejdn_pg.client_metadata import check_client_metadata
from omejdn_pg.entities import Client
from omejdn_pg.errors import AlreadyExists, InvalidKeyMaterial, InvalidValue, NotFound
from omejdn_pg.json_values import check_json, check_text, storable_text
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.names import check_file_name
from omejdn_pg.postgres.database.direct import execute, together
from omejdn_pg.postgres.repositories.attributes import checked_attributes
from omejdn_pg.postgres.repositories.client_fields import CLIENT_ATTRIBUTES, CLIENTS, NOT_METADATA
from omejdn_pg.postgres.repositories.client_reads import JWKS_FIELD, all_clients, find_client
from omejdn_pg.postgres.repositories.common import ConnectionReader, lock_for_update
from omejdn_pg.postgres.repositories.key_mapping import KEYS
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.postgres.schema import (
    CLIENT_CERTIFICATE_TARGET_TYPE,
)
from omejdn_pg.sealing import Keyring

LOCK_KIND: Final = "client"


_EXISTS: Final = select(exists().where(CLIENTS.c.client_id == bindparam("id")))
_DELETE_METADATA: Final = (
    delete(CLIENTS)
    .where(CLIENTS.c.client_id == bindparam("id"))
    .returning(CLIENTS.c.key, CLIENTS.c.ordinal)
)
_each_field = func.jsonb_each(bindparam("metadata_doc", type_=JSONB)).table_valued(
    column("key", Text), column("value", JSONB)
)
_INSERT_METADATA: Final = insert(CLIENTS).from_select(
    ["client_id", "key", "value"],
    select(bindparam("id", type_=Text), _each_field.c.key, _each_field.c.value),
)
# An update writes the rows back in the client's place (see 0006).
_REINSERT_METADATA: Final = insert(CLIENTS).from_select(
    ["client_id", "key", "value", "ordinal"],
    select(
        bindparam("id", type_=Text),
        _each_field.c.key,
        _each_field.c.value,
        bindparam("ordinal", type_=BigInteger),
    ),
)

_DELETE_KEYS: Final = delete(KEYS).where(
    KEYS.c.target_type == CLIENT_CERTIFICATE_TARGET_TYPE, KEYS.c.target == bindparam("id")
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
            CLIENT_ATTRIBUTES.replace(self.conn, values["id"], values["attribute_doc"])
            self._store_keys(values)
        except sa_exc.IntegrityError as error:
            if not isinstance(error.orig, psycopg.errors.UniqueViolation):
                raise
            # Only a writer that ignores our lock (e.g. the Ruby plugin) gets here.
            raise AlreadyExists(f"client {values['id']!r} exists already") from error

    def update(self, client: Client) -> None:
        """Replace the metadata and attributes; NotFound if there is no such client."""
        values = self._checked(client)
        with together(self.conn):
            lock_for_update(self.conn, LOCK_KIND, values["id"])
            deleting = execute(self.conn, _DELETE_METADATA, {"id": values["id"]})
        deleted = deleting.fetchall()
        if not deleted:
            raise NotFound(f"client {values['id']!r} does not exist")
        ordinal = min(row.ordinal for row in deleted)

        def rewrite() -> None:
            execute(
                self.conn,
                _REINSERT_METADATA,
                {"id": values["id"], "metadata_doc": values["metadata_doc"], "ordinal": ordinal},
            )
            CLIENT_ATTRIBUTES.replace(self.conn, values["id"], values["attribute_doc"])

        # The rows and the attributes go out with the read of the stored keys.
        if self.jwks:
            self._store_keys(values, alongside=rewrite)
        else:
            with together(self.conn):
                rewrite()

    def _store_keys(
        self, values: Mapping[str, Any], alongside: Callable[[], object] | None = None
    ) -> None:
        # As Omejdn's client store: the metadata is the whole client, so a
        # client written without ``jwks`` has no keys.
        if self.jwks:
            self.keys.store(
                CLIENT_CERTIFICATE_TARGET_TYPE,
                values["id"],
                values["keys"],
                locked=True,
                alongside=alongside,
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
        CLIENT_ATTRIBUTES.remove(self.conn, client_id)
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


def check_client_id(value: object) -> str:
    """A client id is also a key target, so it must be usable as a file name."""
    return check_file_name(check_text(value, "client_id"), "client_id")
