"""The witness the tests check results with: plain SQL through psycopg, and Alembic's
own comparison of a database with the models, both independent of the code under test."""

from __future__ import annotations

from typing import Any

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from omejdn_pg.postgres import migrate
from omejdn_pg.postgres.database.engine import build_engine
from omejdn_pg.postgres.schema import metadata
from omejdn_pg.settings.connection import ConnectionSettings


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


def schema_differences(settings: ConnectionSettings) -> list[Any]:
    """What Alembic's autogenerate finds between the database and the models."""
    engine = build_engine(settings)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts=migrate.autogenerate_options())
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()
