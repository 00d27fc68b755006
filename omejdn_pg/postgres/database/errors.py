"""Driver errors, translated once into the package's own exceptions, secrets scrubbed.

SQLAlchemy and psycopg say *what* failed; a caller needs to know what to do:
run ``omejdn-pg migrate`` (a table of the schema is missing), fix a password
or ``pg_hba.conf`` (a refused login, which waiting will not cure), wait for a
failover (a server that went away), or raise the pool's size (no free
connection). :func:`translate` makes that call from the SQLSTATE and the
message's first line, with the host and database named and the password
masked. Every way into the database leaves through one context manager,
:class:`translating`, so no caller writes its own translate-on-error pair;
the predicates here (:func:`connection_lost`, :func:`is_unavailable`) are
what the retry rules inside it are written in.
"""

from __future__ import annotations

import getpass
import os
import re
from types import TracebackType
from typing import Final

import psycopg
from sqlalchemy import exc

from omejdn_pg.errors import SchemaOutOfDate, StorageError, StorageUnavailable, first_line
from omejdn_pg.postgres.schema import metadata
from omejdn_pg.settings.connection import ConnectionSettings

SCHEMA_TABLES: Final = frozenset(metadata.tables)
"""The schema's tables: one of them missing means an unmigrated database."""

# SQLSTATEs meaning "the database cannot be used as configured", as opposed to
# a statement that failed (a timeout, a deadlock, a full disk are psycopg
# OperationalErrors too, but the server is there and the next call may work).
_UNAVAILABLE_CLASSES: Final = ("08", "28")
_UNAVAILABLE_STATES: Final = frozenset({"57P01", "57P02", "57P03", "53300", "3D000"})


CONFIGURATION_CLASSES: Final = ("28", "3D")
"""invalid_authorization_specification, invalid_catalog_name: waiting will not help."""
READ_ONLY_STATE: Final = "25006"
"""read_only_sql_transaction: a write reached a node that takes none."""


RETRYABLE_STATES: Final = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected: the transaction was rolled back whole."""
MAX_CONFLICT_RETRIES: Final = 3


def sqlstate(error: exc.DBAPIError) -> str | None:
    state = getattr(error.orig, "sqlstate", None)
    return state if isinstance(state, str) else None


def connection_lost(error: exc.DBAPIError) -> bool:
    """Whether the connection itself broke (not a statement that the server refused)."""
    if error.connection_invalidated:
        return True
    original = error.orig
    if isinstance(original, psycopg.OperationalError):
        state = original.sqlstate
        return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return False


def is_unavailable(original: object) -> bool:
    if isinstance(original, psycopg.InterfaceError):
        return True
    if not isinstance(original, psycopg.OperationalError):
        return False
    state = original.sqlstate
    # Failures to connect carry no SQLSTATE: libpq never reached a server that said one.
    return state is None or state.startswith(_UNAVAILABLE_CLASSES) or state in _UNAVAILABLE_STATES


AUTHENTICATION_ADVICE: Final = (
    ": check the password where this connection takes it from (the URL or plugin file's "
    "password, PGPASSWORD, ~/.pgpass, the service file) and that the server's pg_hba.conf "
    "admits this user from this host to this database"
)
_REFUSED_USER: Final = re.compile(r'(?:authentication failed|pg_hba\.conf entry).*user "([^"]*)"')


def authentication_problem(original: object, connection: ConnectionSettings) -> str | None:
    """``authentication failed for user "X"`` when the server refused who we are, else None.

    A refused login is not an unavailable server: waiting will not help, and
    the operator has to fix a password or pg_hba.conf. libpq reports it before
    any SQLSTATE reaches the client, so its message is what says so.
    """
    if not isinstance(original, psycopg.OperationalError):
        return None
    message = str(original)
    state = original.sqlstate or ""
    named = _REFUSED_USER.search(message)
    missing = "no password supplied" in message
    if named is None and not missing and not state.startswith("28"):
        return None
    user = named.group(1) if named is not None else connection.params.get("user")
    user = user or os.environ.get("PGUSER") or getpass.getuser()
    if missing:
        return f'authentication failed for user "{user}" (a password is required: none given)'
    return f'authentication failed for user "{user}"'


def translate(error: exc.SQLAlchemyError, connection: ConnectionSettings) -> StorageError:
    """The package's exception for a driver error, with no secret in its message."""
    where = connection.describe()
    original = getattr(error, "orig", None)
    if isinstance(original, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        message = first_line(str(original))
        if any(f'"{table}"' in message for table in SCHEMA_TABLES):
            return SchemaOutOfDate(
                f"the database {where} has no omejdn_pg schema or an old one ({message}); "
                "run `omejdn-pg migrate`"
            )
    if getattr(original, "sqlstate", None) == READ_ONLY_STATE:
        return StorageUnavailable(
            f"PostgreSQL at {where} is read-only (a standby, or a primary fenced after a "
            "failover) and no writable primary answered; with several hosts, set "
            "target_session_attrs: read-write"
        )
    refused = authentication_problem(original, connection)
    if refused is not None:
        return StorageUnavailable(f"{refused} at {where}{AUTHENTICATION_ADVICE}")
    if isinstance(error, exc.DBAPIError) and (
        error.connection_invalidated or is_unavailable(original)
    ):
        reason = first_line(str(original)) if original is not None else "connection lost"
        return StorageUnavailable(
            f"PostgreSQL at {where} is unavailable: {connection.scrub(reason)}"
        )
    if isinstance(error, exc.TimeoutError):
        return StorageUnavailable(
            f"no free connection to {where} within the pool timeout; "
            "raise plugins.postgres_backend.pool.size or .timeout"
        )
    reason = first_line(str(original if original is not None else error))
    return StorageError(f"database error at {where}: {connection.scrub(reason)}")


class translating:
    """``with translating(connection):`` a driver error leaves the block as the package's own.

    The one place a SQLAlchemy or psycopg exception becomes a
    :class:`~omejdn_pg.errors.StorageError` (:func:`translate`), its cause kept
    as ``__cause__``; anything else passes through unchanged, so a retry loop
    inside the block decides what to retry and simply re-raises the rest. A
    class rather than a generator: entering and leaving it costs no generator
    frame, which the point-read path pays on every read (named in lower case,
    like :class:`contextlib.suppress`, because it reads as a statement).
    """

    __slots__ = ("connection",)

    def __init__(self, connection: ConnectionSettings) -> None:
        self.connection = connection

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, exc.SQLAlchemyError):
            raise translate(error, self.connection) from error
