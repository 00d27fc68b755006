"""This process's key writes that bypass the adapters, seen through the engine's events.

Key sets are also written outside the adapters (the key lifecycle of the
service layer's Host). The ``keys`` trigger announces those to every process;
the writing process learns of them synchronously from its own engine: a
transaction that wrote ``keys`` drops this process's key entries when its
connection goes back to the pool, after the commit and before the write
returns (read-your-writes).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine, event

from omejdn_pg.postgres.schema import KeyRecord

_KEYS_TABLE: Final = KeyRecord.__table__
_WROTE_KEYS: Final = "omejdn_pg.cache.wrote_keys"
_CHANGES_KEYS: Final = re.compile(r"\s*(?:INSERT INTO|UPDATE|DELETE FROM) keys\b", re.IGNORECASE)


class KeyWriteWatch:
    """Engine events: a statement that changed ``keys`` marks its pooled connection; the
    mark is dropped by a rollback and acted on when the connection is checked in (after
    the commit, before ``Database.write`` returns)."""

    def __init__(
        self, engine: Engine, invalidate: Callable[[str, Sequence[str] | None], None]
    ) -> None:
        self._engine = engine
        self._invalidate = invalidate
        self._listeners: list[tuple[str, Callable[..., None]]] = [
            ("after_cursor_execute", self._executed),
            ("rollback", self._rolled_back),
            ("checkin", self._checked_in),
        ]
        for name, listener in self._listeners:
            event.listen(engine, name, listener)

    def close(self) -> None:
        for name, listener in self._listeners:
            event.remove(self._engine, name, listener)

    @staticmethod
    def _executed(conn: Connection, *args: Any) -> None:
        context = args[3]
        if context is None:
            # A statement sent on the driver connection (postgres.database.direct).
            if _CHANGES_KEYS.match(args[1]):
                conn.info[_WROTE_KEYS] = True
            return
        if not (context.isinsert or context.isupdate or context.isdelete):
            return
        compiled = context.compiled
        if compiled is not None and getattr(compiled.statement, "table", None) is _KEYS_TABLE:
            conn.info[_WROTE_KEYS] = True

    @staticmethod
    def _rolled_back(conn: Connection) -> None:
        try:
            conn.info.pop(_WROTE_KEYS, None)
        except Exception:  # noqa: BLE001 - an invalidated connection has no info; nothing to undo
            return

    def _checked_in(self, _dbapi_connection: object, record: Any) -> None:
        if record is not None and record.info.pop(_WROTE_KEYS, False):
            self._invalidate("keys", None)
