"""Alembic environment for omejdn_pg: where to connect, what to compare, one transaction.

Where to connect, first match wins:

1. an open connection in ``config.attributes["connection"]`` (how
   :mod:`omejdn_pg.postgres.migrate` and the tests run migrations; the caller owns the
   transaction);
2. ConnectionSettings in ``config.attributes["connection_settings"]``;
3. ``alembic -x url=postgresql://...``;
4. ``$OMEJDN_PG_URL``;
5. the ``connection`` of the static plugin files named by ``$OMEJDN_PLUGINS``
   (with none, libpq's ``PG*`` variables and defaults).

The engine is always built by :func:`omejdn_pg.postgres.database.engine.build_engine` from libpq
keywords, so a password never passes through configparser (where ``%`` breaks
it) or a SQLAlchemy URL string (where it could be logged).

All migrations of one command run in ONE transaction: PostgreSQL has
transactional DDL, so an upgrade that fails half-way — e.g. the baseline
refusing a Ruby plugin row it cannot convert — leaves nothing behind. A
transaction-scoped advisory lock serializes concurrent ``migrate`` runs.
"""

from __future__ import annotations

from logging.config import fileConfig

from sqlalchemy import Connection, text

from alembic import context
from omejdn_pg.postgres.database.engine import build_engine
from omejdn_pg.postgres.migrate import (
    CONNECTION_ATTRIBUTE,
    SETTINGS_ATTRIBUTE,
    connection_settings,
    include_name,
)
from omejdn_pg.postgres.schema import metadata
from omejdn_pg.settings.backend import PoolSettings
from omejdn_pg.settings.connection import ConnectionSettings

MIGRATION_LOCK = 0x6F6D656A646E
"""pg_advisory_xact_lock key ("omejdn" in ASCII) held while migrations run."""

config = context.config
target_metadata = metadata

# Logging comes from alembic.ini only when the `alembic` command runs us; when
# a program migrates from code, its own logging configuration stays untouched.
if config.config_file_name is not None and CONNECTION_ATTRIBUTE not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _settings() -> ConnectionSettings:
    given = config.attributes.get(SETTINGS_ATTRIBUTE)
    if isinstance(given, ConnectionSettings):
        return given
    return connection_settings(context.get_x_argument(as_dictionary=True).get("url"))


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the DDL of a fresh install (nothing to adopt offline)."""
    context.configure(
        dialect_name="postgresql",
        literal_binds=True,
        target_metadata=target_metadata,
        include_name=include_name,
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=include_name,
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    shared = config.attributes.get(CONNECTION_ATTRIBUTE)
    if shared is not None:
        _run_on(shared)
        return
    engine = build_engine(_settings(), PoolSettings(size=1, max_overflow=0))
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
