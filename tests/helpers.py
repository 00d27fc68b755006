"""What several test modules share, other than fixtures (those are in ``conftest.py``).

The plain-SQL witness, the wire traces that count round trips, the thread
runners of the concurrency tests, the Hypothesis strategies for JSON, key and
certificate makers, and the subprocess runners of the command-line tests.
Test modules import from here, never from one another.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from psycopg import pq
from sqlalchemy import Connection, event, select

from omejdn_pg.entities import PrivateKey
from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.cache.read_cache import ReadCache
from omejdn_pg.postgres.database.engine import build_engine
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.plugin import PostgresBackendPlugin
from omejdn_pg.postgres.schema import metadata
from omejdn_pg.settings.connection import ConnectionSettings
from tests import secrets

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# --- the witness: plain SQL ---------------------------------------------------------


class PlainSQL:
    """Checks results with plain SQL through psycopg, independent of the code under test."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.conninfo(), autocommit=True) as conn:
            cursor = conn.execute(query.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def value(self, query: str, params: Any = None) -> Any:
        rows = self.rows(query, params)
        assert len(rows) == 1, rows
        return rows[0][0]

    def execute(self, query: str, params: Any = None) -> None:
        self.rows(query, params)

    def many(self, query: str, rows: list[tuple[Any, ...]]) -> None:
        with psycopg.connect(self.settings.conninfo(), autocommit=True) as conn:
            conn.cursor().executemany(query.encode(), rows)


def write_plugins(path: Path, connection: ConnectionSettings, cache: str) -> Path:
    """A plugin file serving every group from PostgreSQL at ``connection``, with ``cache``."""
    params = "".join(f"         {k}: '{v}'\n" for k, v in connection.params.items())
    path.write_text(
        "plugins:\n"
        "   postgres_backend:\n"
        "      connection:\n"
        f"{params}"
        "      passwords: {bcrypt_rounds: 4}\n"
        f"      cache: {cache}\n"
        "deactivate_defaults: [config, keys, client, user]\n"
        "user_backend_default: postgres\n"
        "client_backend_default: postgres\n"
    )
    return path


def schema_differences(settings: ConnectionSettings) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models."""
    engine = build_engine(settings)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts=migrate.autogenerate_options())
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


# --- the wire ---------------------------------------------------------------------


def _start_trace(pgconn: Any, fileno: int) -> None:
    pgconn.trace(fileno)
    pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)


@dataclass
class Wire:
    """What libpq sent and received while an operation ran."""

    lines: list[str]

    @property
    def sent(self) -> list[str]:
        return [line.split("\t")[2].strip() for line in self.lines if line.startswith("F\t")]

    @property
    def round_trips(self) -> int:
        # Extended protocol ends each request with Sync; the simple protocol
        # (which psycopg uses for BEGIN/COMMIT/ROLLBACK) sends one Query.
        return self.sent.count("Sync") + self.sent.count("Query")

    @property
    def transaction_control(self) -> list[str]:
        words = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "START TRANSACTION")
        return [
            line
            for line in self.lines
            if line.startswith("F\t") and any(w in line.upper() for w in words)
        ]

    @property
    def final_status(self) -> str:
        ready = [line for line in self.lines if "\tReadyForQuery" in line]
        return ready[-1].split()[-1]


def traced_read(db: Database, operation: Callable[[Connection], T]) -> tuple[T, Wire]:
    """Run ``operation`` through ``db.read`` with the connection's protocol traced,
    including what the pool does when the connection goes back."""
    with tempfile.TemporaryFile() as trace:
        traced: list[Any] = []

        def run(conn: Connection) -> T:
            pgconn = conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
            _start_trace(pgconn, trace.fileno())
            traced.append(pgconn)
            return operation(conn)

        try:
            result = db.read(run)
        finally:
            for pgconn in traced:
                pgconn.untrace()
        trace.seek(0)
        return result, Wire(trace.read().decode("utf-8", "replace").splitlines())


@contextmanager
def _wire_trace(db: Database) -> Iterator[list[str]]:
    """The frontend messages libpq sends while the block runs, on the pool's one connection."""
    messages: list[str] = []
    with tempfile.TemporaryFile() as trace:
        db.read(lambda conn: _start_trace(conn.connection.driver_connection.pgconn, trace.fileno()))
        try:
            yield messages
        finally:
            db.read(lambda conn: conn.connection.driver_connection.pgconn.untrace())
            trace.seek(0)
            for line in trace.read().decode("utf-8", "replace").splitlines():
                fields = line.split("\t")
                if fields[0] == "F":
                    messages.append(" ".join(fields[2:]))


def assert_point_read(db: Database, operation: Callable[[Connection], T]) -> T:
    """Run ``operation`` through ``db.read`` and assert it is one statement, one round
    trip, and no BEGIN/COMMIT/ROLLBACK/SAVEPOINT reaches the server.

    SQLAlchemy fires its ``begin``/``rollback`` events for every connection use,
    AUTOCOMMIT included, where the driver sends nothing; so the events are
    checked to have happened only in autocommit mode, and the libpq trace
    confirms what actually went over the wire.
    """
    # Warm the pool: the dialect's first-connect queries must not be counted,
    # and the traced connection must be the one the read gets.
    db.read(lambda conn: conn.execute(select(1)).scalar())
    assert db.engine.pool.checkedin() == 1  # type: ignore[attr-defined]

    seen: list[tuple[str, Any]] = []

    def recorder(name: str) -> Callable[..., None]:
        def record(conn: Connection, *args: Any, **kwargs: Any) -> None:
            autocommit = conn.connection.driver_connection.autocommit  # type: ignore[union-attr]
            seen.append((name, autocommit if name != "before_cursor_execute" else args[1]))

        return record

    listeners = [
        (name, recorder(name)) for name in ("before_cursor_execute", "begin", "commit", "rollback")
    ]
    for name, listener in listeners:
        event.listen(db.engine, name, listener)
    try:
        with _wire_trace(db) as wire:
            result = db.read(operation)
    finally:
        for name, listener in listeners:
            event.remove(db.engine, name, listener)

    statements = [detail for name, detail in seen if name == "before_cursor_execute"]
    assert len(statements) == 1, statements
    assert not [name for name, _ in seen if name == "commit"], seen
    assert all(autocommit for name, autocommit in seen if name in ("begin", "rollback")), seen
    round_trips = [m for m in wire if m.startswith(("Query", "Sync"))]
    assert len(round_trips) == 1, wire
    control = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")
    assert not [m for m in wire if any(word in m.upper() for word in control)], wire
    return result


# --- concurrency ------------------------------------------------------------------

WRITERS = 8


def run_together(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``work(0..count-1)`` in threads released at once; errors are returned."""
    barrier = threading.Barrier(count)

    def start(n: int) -> T | BaseException:
        barrier.wait()
        try:
            return work(n)
        except Exception as error:
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


def read_while_writing(
    write: Callable[[int], None], read: Callable[[], T], *, writers: int = 8, readers: int = 2
) -> tuple[list[T], list[BaseException]]:
    """Run ``write(0..writers-1)`` in threads while ``readers`` threads call ``read``
    again and again until every writer is done.

    Returns what the readers saw and whatever any thread raised.
    """
    failures: list[BaseException] = []
    seen: list[T] = []
    done = threading.Event()

    def writer(index: int) -> None:
        try:
            write(index)
        except BaseException as error:
            failures.append(error)

    def reader() -> None:
        try:
            while not done.is_set():
                seen.append(read())
        except BaseException as error:
            failures.append(error)

    reader_threads = [threading.Thread(target=reader) for _ in range(readers)]
    writer_threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in reader_threads + writer_threads:
        thread.start()
    for thread in writer_threads:
        thread.join()
    done.set()
    for thread in reader_threads:
        thread.join()
    return seen, failures


# --- properties -------------------------------------------------------------------

NO_NUL = st.characters(codec="utf-8", exclude_characters="\x00")  # no lone surrogates
texts = st.text(NO_NUL, max_size=30)
large_texts = st.builds(
    lambda s, n: s * n, st.text(NO_NUL, min_size=1, max_size=8), st.integers(500, 5000)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
    | large_texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=30,
)
names = st.text(NO_NUL, min_size=1, max_size=40)


def same_json(value: Any) -> Any:
    """``value`` with numbers compared by value: jsonb keeps numbers as decimals
    and prints integral ones without a fraction (1e16 comes back as 10**16)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if isinstance(value, list):
        return [same_json(v) for v in value]
    return {k: same_json(v) for k, v in value.items()}


PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- keys and certificates --------------------------------------------------------


def make_cert(
    subject_key: PrivateKey, subject: str, issuer_key: PrivateKey, issuer: str, *, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def make_chain(leaf_key: PrivateKey, length: int) -> list[x509.Certificate]:
    """``[leaf, intermediate..., root]`` of ``length`` certificates, leaf first."""
    issuers = [ec.generate_private_key(ec.SECP256R1()) for _ in range(length - 1)]
    chain = []
    subject_key, subject = leaf_key, "leaf"
    for index, issuer_key in enumerate(issuers):
        issuer = f"ca{index}"
        chain.append(make_cert(subject_key, subject, issuer_key, issuer, ca=index > 0))
        subject_key, subject = issuer_key, issuer
    chain.append(make_cert(subject_key, subject, subject_key, subject, ca=length > 1))
    return chain


def pem(key: PrivateKey, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


def public_pem(key: PrivateKey, fmt: serialization.PublicFormat) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM, fmt).decode()


# --- subprocesses: the CLI, the migrations, the examples -------------------------------

CLEAN_ENV = ("OMEJDN_PG_URL", "OMEJDN_PLUGINS", "OMEJDN_PG_DATA", "OMEJDN_PG_DEBUG")


def omejdn_pg(
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m omejdn_pg ARGS`` with none of its settings inherited but ``env``."""
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    environment.update(env or {})
    result = python_m("omejdn_pg", *args, input=input, env=environment, cwd=cwd, timeout=180)
    secrets.said(result.stdout)
    secrets.said(result.stderr)
    return result


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The single ``error:`` line of a failed run (exit ``code``), with no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def python_m(
    module: str,
    *args: str,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` with this interpreter: output captured, exit status unchecked."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def make_examples(target: Path) -> Path:
    """The committed example configuration plus keys generated by the repository's script."""
    shutil.copytree(EXAMPLES / "config", target / "config")
    subprocess.run(
        [sys.executable, str(EXAMPLES / "generate.py"), str(target), "--quiet"], check=True
    )
    return target


# --- the read cache -----------------------------------------------------------------


def plugin(loader: PluginLoader) -> PostgresBackendPlugin:
    """The postgres_backend plugin ``loader`` loaded."""
    found = loader.plugins["postgres_backend"]
    assert isinstance(found, PostgresBackendPlugin)
    return found


def cache_of(loader: PluginLoader) -> ReadCache:
    """That plugin's read cache (it must have one)."""
    cache = plugin(loader).cache
    assert cache is not None
    return cache
