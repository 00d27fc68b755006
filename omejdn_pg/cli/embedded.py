"""The embedded default: a PostgreSQL of our own when no connection is configured.

``omejdn-pg`` with no ``--url``, no ``OMEJDN_PG_URL`` and no plugin file
naming a connection starts (or reuses) a PostgreSQL server from the
``pgserver`` wheel, with its data in a local folder (``./.omejdn-pg/pgdata``,
or ``OMEJDN_PG_DATA``). That is what makes the quick start work on a machine
with no database server at all.

The trade-off: the server outlives the command that started it (pgserver's
``cleanup_mode=None``), so consecutive commands reuse it instead of paying a
start each time — which means someone must stop it (``omejdn-pg db stop``).
It listens on a Unix socket only, never on a TCP port, and trusts local
connections: a development and evaluation database, not a production one.
Reusing a running server reads its ``postmaster.pid`` and does not touch
pgserver's start-up path at all, so a reuse costs a file read: the ``omejdn``
database is created when the server is started, and otherwise only when a
first connection to it fails (:func:`with_database`), not checked every time.

pgserver is an optional extra (``omejdn-pg[embedded]``); without it, the
embedded default fails with one line saying how to install it or how to
configure a connection instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql

from omejdn_pg.errors import EmbeddedError, StorageUnavailable, first_line
from omejdn_pg.settings.connection import ConnectionSettings

T = TypeVar("T")

DATA_ENV: Final = "OMEJDN_PG_DATA"
DEFAULT_DATA_DIR: Final = Path(".omejdn-pg") / "pgdata"
DATABASE: Final = "omejdn"
"""The database the CLI uses on the embedded server (``postgres`` stays the admin's)."""
SUPERUSER: Final = "postgres"
INSTALL_HINT: Final = (
    "the embedded PostgreSQL needs the pgserver package: pip install 'omejdn-pg[embedded]' "
    "(or configure a connection with --url, OMEJDN_PG_URL or a plugin file)"
)


@dataclass(frozen=True)
class EmbeddedStatus:
    """What ``postmaster.pid`` of a data folder says."""

    data_dir: Path
    running: bool
    pid: int | None = None
    socket_dir: Path | None = None
    port: int | None = None

    def connection(self, dbname: str = DATABASE) -> ConnectionSettings:
        """Connection settings for ``dbname`` on the running server."""
        if not self.running or self.socket_dir is None:
            raise StorageUnavailable(f"the embedded PostgreSQL in {self.data_dir} is not running")
        return ConnectionSettings(
            {
                "host": str(self.socket_dir),
                "port": str(self.port or 5432),
                "user": SUPERUSER,
                "dbname": dbname,
            }
        )

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"data_dir": str(self.data_dir), "running": self.running}
        if self.running:
            result.update(
                pid=self.pid,
                socket_dir=str(self.socket_dir) if self.socket_dir else None,
                port=self.port,
                url=url(self.connection()),
            )
        return result


def data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The data folder: ``$OMEJDN_PG_DATA``, else ``./.omejdn-pg/pgdata``, made absolute."""
    value = (environ if environ is not None else os.environ).get(DATA_ENV)
    return Path(value).expanduser().absolute() if value else DEFAULT_DATA_DIR.absolute()


def url(settings: ConnectionSettings) -> str:
    """A libpq URI for a socket connection (the socket directory as the ``host`` parameter)."""
    params = settings.params
    return (
        f"postgresql://{params.get('user', SUPERUSER)}@/{params.get('dbname', DATABASE)}"
        f"?host={params['host']}&port={params.get('port', '5432')}"
    )


def status(path: Path) -> EmbeddedStatus:
    """Whether a server runs on ``path``, without starting one."""
    pid_file = path / "postmaster.pid"
    try:
        lines = pid_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return EmbeddedStatus(path, running=False)
    except OSError as exc:
        raise EmbeddedError(f"{pid_file}: cannot read: {exc.strerror}") from exc
    # postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem, status
    if len(lines) < 8:
        return EmbeddedStatus(path, running=False)
    try:
        pid = int(lines[0].strip())
        port = int(lines[3].strip()) if lines[3].strip() else None
    except ValueError:
        return EmbeddedStatus(path, running=False)
    socket_dir = Path(lines[4].strip()) if lines[4].strip() else None
    running = process_exists(pid) and lines[7].strip() == "ready"
    return EmbeddedStatus(path, running, pid if running else None, socket_dir, port)


def start(path: Path) -> tuple[EmbeddedStatus, bool]:
    """Start the server on ``path`` unless it runs already; ``(status, started_now)``.

    The ``omejdn`` database is created when the server is started here; reusing
    a running server opens no connection (see :func:`with_database`).
    """
    current = status(path)
    started = False
    if not current.running:
        pgserver = _pgserver()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with scrubbed_environment():
                pgserver.get_server(path, cleanup_mode=None)
        except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError) as exc:
            log_file = path / "log"
            raise EmbeddedError(
                f"the embedded PostgreSQL in {path} did not start ({type(exc).__name__}: "
                f"{first_line(str(exc))}); see {log_file}"
            ) from exc
        current = status(path)
        started = True
        if not current.running:
            raise EmbeddedError(
                f"the embedded PostgreSQL in {path} did not start; see {path / 'log'}"
            )
        ensure_database(current)
    return current, started


KEPT_ENV: Final = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR")
"""What the server's processes may inherit of the CLI's environment (and ``LC_*``)."""


@contextlib.contextmanager
def scrubbed_environment() -> Iterator[None]:
    """This process's environment reduced to :data:`KEPT_ENV` while the server starts.

    pgserver starts ``initdb`` and ``pg_ctl`` with the inherited environment
    and has no way to pass another; the server then lives on, as another
    account under root, holding whatever the CLI had: a KEK variable,
    ``PGPASSWORD``, ``OMEJDN_PG_URL`` with its password, readable in
    ``/proc/<pid>/environ``. The CLI runs one thread here, so swapping
    ``os.environ`` for the start is safe; it is put back whole after.
    """
    saved = dict(os.environ)
    kept = {k: v for k, v in saved.items() if k in KEPT_ENV or k.startswith("LC_")}
    os.environ.clear()
    os.environ.update(kept)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def with_database(current: EmbeddedStatus, operation: Callable[[], T]) -> T:
    """Run ``operation``, a command's first use of the ``omejdn`` database on ``current``.

    If it cannot connect and the database turns out to be missing (a server
    reused from elsewhere, a dropped database, a concurrent first start that
    has not created it yet), the database is created and ``operation`` runs
    once more. libpq reports a missing database at connect time without a
    SQLSTATE (no InvalidCatalogName to catch), so the admin database is asked
    instead of parsing a possibly translated message.
    """
    try:
        return operation()
    except StorageUnavailable:
        try:
            created = ensure_database(current)
        except StorageUnavailable:
            created = False  # the server is gone: the first error says it best
        if not created:
            raise
    return operation()


def stop(path: Path, timeout: float = 60.0) -> bool:
    """Stop the server on ``path`` (a fast shutdown); False if it was not running.

    The postmaster is signalled directly rather than through ``pg_ctl``: under
    root, pgserver runs PostgreSQL as the ``pgserver`` user, and ``pg_ctl`` as
    that user fails whenever a parent folder of the data is not open to it
    (pytest, for one, resets its temporary root to mode 0700). The data stays.
    """
    current = status(path)
    if not current.running or current.pid is None:
        return False
    try:
        os.kill(current.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        raise EmbeddedError(
            f"not allowed to stop the embedded PostgreSQL in {path} (pid {current.pid})"
        ) from exc
    deadline = time.monotonic() + timeout
    while process_exists(current.pid):
        if time.monotonic() > deadline:
            raise EmbeddedError(
                f"the embedded PostgreSQL in {path} (pid {current.pid}) did not stop "
                f"within {timeout:.0f}s; see {path / 'log'}"
            )
        time.sleep(0.05)
    return True


def ensure_database(current: EmbeddedStatus) -> bool:
    """Create the ``omejdn`` database unless it exists; whether it was missing just now."""
    admin = current.connection(dbname=SUPERUSER)
    try:
        with psycopg.connect(admin.conninfo(), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if exists is not None:
                return False
            conn.execute(
                sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0").format(
                    sql.Identifier(DATABASE)
                )
            )
            return True
    except psycopg.errors.DuplicateDatabase:
        return True  # a concurrent first start created it meanwhile
    except psycopg.Error as exc:
        raise StorageUnavailable(
            f"the embedded PostgreSQL in {current.data_dir} does not answer: {first_line(str(exc))}"
        ) from exc


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, cron): harmless.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise EmbeddedError(INSTALL_HINT) from exc
    # pgserver logs whole command outputs at ERROR level; the CLI reports one
    # line and points at the server log instead.
    logging.getLogger("pgserver").addHandler(logging.NullHandler())
    logging.getLogger("pgserver").propagate = False
    return pgserver


def process_exists(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, never reaped in some containers, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
