"""The package's exception tree.

Every error a caller can act on is one of these, raised ``from`` the driver's
error so the cause stays on the traceback for debugging while the message stays
fit for an operator: it names what was wrong (a user, a section, a file, a
host) and never carries a password, a private key or a connection password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from os import PathLike


def first_line(text: str) -> str:
    """The first line of a driver's or server's message (the rest is its context)."""
    lines = text.strip().splitlines()
    return lines[0] if lines else text


class OmejdnPgError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(OmejdnPgError):
    """The static plugin configuration is missing, malformed or inconsistent."""


class EmbeddedError(ConfigurationError):
    """The embedded server cannot be used (pgserver missing, start failed, ...)."""


class StorageError(OmejdnPgError):
    """A storage operation failed; nothing of it was written."""


class StorageUnavailable(StorageError):
    """The database cannot be reached, or the connection broke mid-operation."""


class PermissionDenied(StorageError):
    """The database role may not do what the operation needs (e.g. create a table)."""


class SchemaOutOfDate(StorageError):
    """The database schema is not at the revision this package expects."""


class NotFound(StorageError, LookupError):
    """The user, client or section the operation needs does not exist."""


class AlreadyExists(StorageError):
    """A user or client with the same identifier exists already."""


class InvalidInput(OmejdnPgError, ValueError):
    """A value from outside cannot be stored as given."""


class InvalidSectionName(InvalidInput):
    """A configuration section name outside ``^[a-z][a-z0-9_]{0,48}$``."""


class InvalidValue(InvalidInput):
    """A value PostgreSQL cannot store, e.g. JSON with a ``\\u0000`` character."""


class InvalidKeyMaterial(InvalidInput):
    """A PEM that is not a usable RSA/EC key or X.509 certificate chain."""


class PasswordRejected(InvalidInput):
    """A new password that the password policy cannot hash safely."""


class MigrationError(OmejdnPgError):
    """A schema migration stopped; the database was left as it was."""


class TransferError(OmejdnPgError):
    """The directory cannot be imported or exported as it is; nothing was written."""


class BackupError(TransferError):
    """A backup file cannot be written or restored as it is; nothing was written."""


@contextmanager
def located(
    where: str | PathLike[str],
    catch: type[OmejdnPgError] | tuple[type[OmejdnPgError], ...] = OmejdnPgError,
    *,
    raise_as: type[OmejdnPgError] | None = None,
) -> Iterator[None]:
    """Errors of ``catch`` raised inside, told with ``where`` first: ``<where>: <message>``.

    The one way to say where a refusal happened (a file, a key, a section)
    without threading that place through every function below: they raise
    what is wrong, the caller that knows the place wraps the call. The error
    keeps its class unless ``raise_as`` names the caller's own (a transfer's,
    a backup's), and is raised ``from`` the original, whose message is the
    same minus the place; nothing is added that the message did not hold.
    """
    try:
        yield
    except catch as error:
        raise (raise_as or type(error))(f"{where}: {error}") from error
