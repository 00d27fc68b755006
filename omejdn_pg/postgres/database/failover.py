"""Riding out a failover: no pooled connection to a fenced node, reads that wait for a primary.

After a failover the old primary may still answer, read-only. A pooled
connection to it is never used again once it has said so: PostgreSQL (14+)
reports ``in_hot_standby`` and ``default_transaction_read_only`` to the client
whenever they change, so the pool's checkout sees it at no cost and discards
that connection and every older one (:class:`ReadOnlyGuard`); a write refused
with SQLSTATE 25006 (read_only_sql_transaction) counts as a lost connection —
discarded with the whole pool and run once more on a fresh one, which libpq's
``target_session_attrs=read-write`` sends to the new primary.

A read that finds the server that answered before gone (a failover in
progress, a restart) keeps trying with backoff for ``failover.read_wait``,
then fails with StorageUnavailable (:class:`ReadWait`). Writes never wait for
a failover: with no writable primary they fail at once.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import random
import time
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final, TypeVar

from sqlalchemy import Engine, event, exc
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.pool import ConnectionPoolEntry

from omejdn_pg.postgres.database.errors import (
    CONFIGURATION_CLASSES,
    READ_ONLY_STATE,
    connection_lost,
    is_unavailable,
    sqlstate,
    translating,
)
from omejdn_pg.postgres.database.readpool import node_read_only
from omejdn_pg.settings.backend import FailoverSettings
from omejdn_pg.settings.connection import ConnectionSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

READ_BACKOFF_FIRST: Final = 0.01
READ_BACKOFF_MAX: Final = 0.1
"""Seconds between a waiting read's attempts: doubling from the first to the most, jittered.

The first retry is immediate (a fresh connection); the pause then never grows past
0.1 s, so a read finds a newly promoted primary within ~0.1 s of its promotion
(with 0.5 s it was up to half a second: most of the read gap of a failover). The
price is one failing connection attempt per waiting reader per 0.1 s while no
primary answers, which a refused or read-only node answers in milliseconds."""


def reports_read_only(dbapi_connection: Any) -> bool:
    """Whether the server last reported itself read-only on this connection (no round trip);
    see :func:`~omejdn_pg.postgres.database.readpool.node_read_only`."""
    return not dbapi_connection.closed and node_read_only(dbapi_connection.pgconn)


class ReadOnlyGuard:
    """The primary pool's rule: no connection to a node that turned read-only is used again.

    When a connection comes back to the pool having heard its node turn
    read-only (:func:`reports_read_only`), every connection made before that
    moment points at the same node: each is discarded at its next checkout
    (SQLAlchemy's ``InvalidatePoolError``) and replaced by a fresh one, which
    libpq's ``target_session_attrs=read-write`` sends to the new primary. A
    connection just made is used as it is — libpq chose its node, and without
    ``target_session_attrs`` that node is the best there is; a write refused
    there (25006) counts as a lost connection, so write() runs it once more
    on a fresh connection and then reports the node read-only.
    """

    _installed: ClassVar[weakref.WeakKeyDictionary[Engine, ReadOnlyGuard]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self.since = float("-inf")
        """``time.monotonic()`` when a node was last found read-only."""
        self.discarded = 0

    @classmethod
    def install(cls, engine: Engine) -> ReadOnlyGuard:
        """The guard of ``engine``'s pool, installed on first use."""
        guard = cls._installed.get(engine)
        if guard is None:
            guard = cls._installed[engine] = cls()
            event.listen(engine, "connect", guard.connected)
            event.listen(engine, "checkin", guard.checked_in)
            event.listen(engine, "checkout", guard.checked_out)
            event.listen(engine, "handle_error", _read_only_is_a_lost_connection)
        return guard

    def found_read_only(self) -> None:
        """A connection (of any pool sharing this guard) heard its node turn read-only."""
        self.since = time.monotonic()
        self.discarded += 1
        log.info("discarding the connections to a node that became read-only")

    def connection_lost(self, *, read_only: bool) -> None:
        """A statement sent outside SQLAlchemy's execution found its connection broken or
        its node read-only: every pooled connection made before goes, as SQLAlchemy
        discards its whole pool after a disconnect."""
        if read_only:
            self.found_read_only()
            return
        self.since = time.monotonic()
        log.info("discarding the pooled connections made before a lost connection")

    def connected(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["connected"] = time.monotonic()
        record.info["fresh"] = True

    def checked_in(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None and reports_read_only(dbapi_connection):
            self.since = time.monotonic()

    def checked_out(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        if record.info.pop("fresh", False):
            return
        if record.info.get("connected", float("-inf")) <= self.since or reports_read_only(
            dbapi_connection
        ):
            self.since = max(self.since, time.monotonic())
            self.discarded += 1
            log.info("discarding a pooled connection to a node that became read-only")
            raise exc.InvalidatePoolError("the node of this pooled connection became read-only")


def _read_only_is_a_lost_connection(context: ExceptionContext) -> None:
    # 25006: the node takes no writes (a standby, or a fenced old primary).
    # As a disconnect, SQLAlchemy discards this connection and the whole pool,
    # and write() runs the operation once more on a fresh connection.
    if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_STATE:
        context.is_disconnect = True


class ReadWait:
    """Reads of one database that ride out a failover: retried at once on a fresh connection
    after a disconnect, then, if the server answered before, with backoff up to ``read_wait``."""

    def __init__(self, connection: ConnectionSettings, failover: FailoverSettings) -> None:
        self.connection = connection
        self.failover = failover
        self.answered = False
        """Whether the server ever answered: one that never did is misconfigured, not away."""

    def run(self, attempt: Callable[[], T]) -> T:
        deadline: float | None = None
        pause = READ_BACKOFF_FIRST
        with translating(self.connection):
            for number in itertools.count(1):
                try:
                    result = attempt()
                    self.answered = True
                    return result
                except exc.DBAPIError as error:
                    if number == 1 and error.connection_invalidated:
                        log.info("retrying a read on a fresh connection after a disconnect")
                        continue
                    if not self.may_wait(error):
                        raise
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self.failover.read_wait.total_seconds()
                        log.warning(
                            "PostgreSQL at %s stopped answering; reads wait up to %s",
                            self.connection.describe(),
                            self.failover.read_wait,
                        )
                    if now >= deadline:
                        raise
                    time.sleep(min(pause * random.uniform(0.5, 1.0), deadline - now))  # noqa: S311
                    pause = min(READ_BACKOFF_MAX, pause * 2)
        raise AssertionError("unreachable")  # pragma: no cover

    def may_wait(self, error: exc.DBAPIError) -> bool:
        """A server that answered before and is now away (not misconfigured) may come back."""
        if not self.answered or self.failover.read_wait <= datetime.timedelta(0):
            return False
        state = sqlstate(error)
        if state is not None and state.startswith(CONFIGURATION_CLASSES):
            return False
        return connection_lost(error) or is_unavailable(error.orig)
