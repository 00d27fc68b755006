"""A real PostgreSQL for every test: never a mock, never SQLite.

The server is ``OMEJDN_PG_TEST_DSN`` when set, otherwise an embedded
PostgreSQL (the ``pgserver`` wheel) started once for the whole session, when
the first test asks for a database (``tests/unit`` never does), in a temporary
folder deleted afterwards. Each test gets a database of its own,
created and dropped around it: ``empty_database`` for a bare one (migration
tests), ``database`` for one at the current schema (cloned from a template
migrated once per session, so migrating costs nothing per test).

These fixtures serve every folder of tests; a folder's own live in its
``conftest.py``, and what modules share besides fixtures in ``tests/kits``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from psycopg import sql

from omejdn_pg.errors import OmejdnPgError
from omejdn_pg.host.loader import PluginLoader
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.settings.connection import ConnectionSettings
from tests import secrets
from tests.kits.commands import make_examples
from tests.kits.plugins import plugin, plugin_file
from tests.kits.witness import PlainSQL

TEST_DSN_ENV = "OMEJDN_PG_TEST_DSN"


@pytest.fixture(scope="session", autouse=True)
def no_secret_escapes() -> Iterator[None]:
    """Across the whole session, no secret the tests use may appear in what the package
    says: DEBUG-level logs of omejdn_pg and alembic (SQLAlchemy's at INFO: statements,
    never parameters), the message of every exception of the package, and the output of
    every CLI run. Checked once, when the session ends."""
    handler = secrets.CapturingHandler()
    watched = [logging.getLogger(name) for name in ("omejdn_pg", "alembic", "sqlalchemy")]
    levels = [logger.level for logger in watched]
    for logger in watched:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO if logger.name == "sqlalchemy" else logging.DEBUG)
    original_init = OmejdnPgError.__init__

    def recording_init(self: OmejdnPgError, *args: object) -> None:
        secrets.said(" ".join(map(str, args)))
        original_init(self, *args)

    OmejdnPgError.__init__ = recording_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        OmejdnPgError.__init__ = original_init  # type: ignore[method-assign]
        for logger, level in zip(watched, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
    leaks = secrets.leaks()
    assert not leaks, f"secrets escaped into logs, messages or CLI output: {leaks[:5]}"


@pytest.fixture(scope="session")
def server() -> Iterator[ConnectionSettings]:
    """Admin connection settings of the PostgreSQL server the suite runs against."""
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        yield ConnectionSettings.from_url(dsn)
        return
    import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="omejdn-pg-test-"))
    embedded = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        settings = ConnectionSettings.from_url(embedded.get_uri())
        # A throwaway server: durability buys nothing here, and every test commits.
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            for name in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(name)))
            conn.execute("SELECT pg_reload_conf()")
        yield settings
    finally:
        embedded.cleanup()


def admin_execute(server: ConnectionSettings, statement: sql.Composable) -> None:
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(statement)


def create_database(server: ConnectionSettings, template: str | None = None) -> str:
    name = f"omejdn_pg_test_{uuid.uuid4().hex[:16]}"
    statement = sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(template or "template0")
    )
    admin_execute(server, statement)
    return name


def drop_database(server: ConnectionSettings, name: str) -> None:
    admin_execute(
        server, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )


@pytest.fixture(scope="session")
def template_database(server: ConnectionSettings) -> Iterator[str]:
    """A database at the head revision, cloned for each test that wants a schema."""
    from omejdn_pg.postgres import migrate

    name = create_database(server)
    try:
        migrate.upgrade(server.with_params(dbname=name))
        yield name
    finally:
        drop_database(server, name)


@pytest.fixture
def empty_database(server: ConnectionSettings) -> Iterator[ConnectionSettings]:
    """Connection settings of a new, empty database of this test's own."""
    with fresh_database(server, None) as settings:
        yield settings


@contextlib.contextmanager
def fresh_database(
    server: ConnectionSettings, template: str | None
) -> Iterator[ConnectionSettings]:
    """A new database cloned from ``template`` (None: an empty one), dropped afterwards."""
    name = create_database(server, template=template)
    try:
        yield server.with_params(dbname=name)
    finally:
        drop_database(server, name)


@pytest.fixture
def database(server: ConnectionSettings, template_database: str) -> Iterator[ConnectionSettings]:
    """Connection settings of a new database at the head schema, this test's own."""
    with fresh_database(server, template_database) as settings:
        yield settings


@pytest.fixture
def other_database(
    server: ConnectionSettings, template_database: str
) -> Iterator[ConnectionSettings]:
    """A second new database at the head schema (where a backup is restored, say)."""
    with fresh_database(server, template_database) as settings:
        yield settings


@pytest.fixture
def db(database: ConnectionSettings) -> Iterator[Database]:
    """The package's Database over this test's own migrated database."""
    handle = Database.connect(database)
    try:
        yield handle
    finally:
        handle.dispose()


@pytest.fixture
def app_role(server: ConnectionSettings, database: ConnectionSettings) -> Iterator[str]:
    """A login role of its own for the test, with no privileges until a test grants some."""
    role = f"omejdn_app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield role
    # Its privileges live in the test database: drop them there, then the role.
    with psycopg.connect(database.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(server.conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def plain_sql(database: ConnectionSettings) -> PlainSQL:
    return PlainSQL(database)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def examples_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed example configuration plus keys from the repository's script."""
    return make_examples(tmp_path_factory.mktemp("examples") / "deployment")


@pytest.fixture
def examples(examples_source: Path, tmp_path: Path) -> Path:
    """A private copy of the example deployment, free to be modified by the test."""
    return Path(shutil.copytree(examples_source, tmp_path / "deployment"))


@pytest.fixture(scope="session")
def password_server() -> Iterator[ConnectionSettings]:
    """A second embedded server that checks passwords (scram-sha-256) for role ``alice``.

    The suite's main server trusts every connection, so a wrong password could
    never fail there; this one refuses it as a production server would.
    """
    import pgserver

    data_dir = Path(tempfile.mkdtemp(prefix="omejdn-pg-test-scram-"))
    embedded = pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        admin = ConnectionSettings.from_url(embedded.get_uri())
        with psycopg.connect(admin.conninfo(), autocommit=True) as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute("CREATE ROLE alice LOGIN PASSWORD 'right-password'")
            hba_file = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
            hba_file.write_text(
                "local all postgres trust\n"
                "local all all scram-sha-256\n"
                "host all all all scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")
        yield admin.with_params(user="alice", dbname="postgres", password="right-password")
    finally:
        embedded.cleanup()


@pytest.fixture
def open_loader(
    database: ConnectionSettings, tmp_path: Path
) -> Iterator[Callable[..., PluginLoader]]:
    """Opens loaders of plugin files on this test's database, each a stand-in for a server
    process, all closed after the test.

    ``open_loader(cache, wait=True, **options)``: ``cache`` is the plugin's cache setting,
    ``options`` those of :func:`tests.kits.plugins.plugin_yaml`; with ``wait``, a read
    cache is serving before the loader is returned.
    """
    opened: list[PluginLoader] = []

    def open_(cache: str, *, wait: bool = True, **options: Any) -> PluginLoader:
        path = plugin_file(
            tmp_path / f"plugins-{len(opened)}.yml", database, cache=cache, **options
        )
        loader = PluginLoader.from_files([path], base_dir=tmp_path)
        opened.append(loader)
        found = plugin(loader).cache
        if wait and found is not None:
            assert found.wait_until_serving(10), found.stats()
        return loader

    yield open_
    for loader in opened:
        loader.close()
