"""The listener: one thread, one connection, that keeps a read cache honest or makes it step aside.

Each cache has one listener thread with its own psycopg connection (not the
pool's: it must stay in LISTEN, on the primary, outside PgBouncer's
transaction pooling). It drops the entries each notice names. On every
(re)connect it first LISTENs, then flushes everything, then polls the counter
rows: nothing committed while it was away survives. Every
``max_staleness / 2`` it polls the counter rows again (one small SELECT, its
heartbeat): a row the heard notices do not reach means a notice was lost, and
that group is flushed; the same poll proves the connection alive, and the
time it was *sent* is what the cache's serving bound is counted from. A
listener that cannot reach the server keeps reconnecting with backoff while
the cache steps aside.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from typing import Any, Final, Protocol

import psycopg

from omejdn_pg.errors import first_line
from omejdn_pg.postgres.cache.changes import CHANNEL, Polled, Row
from omejdn_pg.postgres.database.readpool import node_read_only
from omejdn_pg.settings.backend import CacheSettings
from omejdn_pg.settings.connection import ConnectionSettings

log = logging.getLogger(__name__)

LISTENER_APPLICATION_NAME: Final = "omejdn_pg-cache-listener"
"""``application_name`` of the listener's connection (``pg_stat_activity``)."""

_LISTENER_DEFAULTS: Final = {
    "connect_timeout": "5",
    # LISTEN works only on a primary, and only a primary's writers notify.
    "target_session_attrs": "read-write",
    # A peer that vanished without a FIN must not hold the listener for
    # TCP's two hours; the serving bound never depends on these.
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}
_FIRST_RETRY: Final = 0.05
_LAST_RETRY: Final = 2.0
_TICK: Final = 0.1
"""Longest the listener waits for notices before checking its clock and stop flag."""
_POLL: Final = (
    "SELECT name, writer, counter, floor(extract(epoch FROM changed_at) * 1000)::bigint "
    f"FROM {CHANNEL}"
)
_PRUNE: Final = "SELECT omejdn_pg_changes_prune()"
PRUNE_INTERVAL: Final = 60.0
"""Seconds between a listener's calls to prune counter rows idle for two hours."""


def listener_connection(
    connection: ConnectionSettings, settings: CacheSettings
) -> ConnectionSettings:
    """The listener's libpq keywords: ``connection``, then ``listen_connection`` over it."""
    own = settings.listen_connection.params
    params = {**_LISTENER_DEFAULTS, **connection.params, **own}
    params["application_name"] = own.get("application_name", LISTENER_APPLICATION_NAME)
    return ConnectionSettings(params)


class Receiver(Protocol):
    """What a listener tells its cache (:class:`~.read_cache.ReadCache`), on its own thread."""

    @property
    def connection(self) -> ConnectionSettings: ...

    @property
    def max_staleness(self) -> float: ...

    def on_connect(self) -> None: ...

    def on_down(self, reason: str) -> bool: ...

    def baseline(self, counters: Polled) -> None: ...

    def on_notice(self, payload: str) -> None: ...

    def behind(self, counters: Polled) -> set[Row]: ...

    def on_heartbeat(self, sent: float, counters: Polled, behind: Iterable[Row]) -> None: ...

    def stats(self, *, log_line: bool = False) -> dict[str, Any]: ...


class Listener:
    """One thread, one connection: LISTEN, drop what notices name, poll the counters."""

    def __init__(self, cache: Receiver, log_interval: float) -> None:
        self._cache = cache
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=LISTENER_APPLICATION_NAME, daemon=True
        )
        self.connected = False
        self._established = False
        self._interval = cache.max_staleness / 2
        self._log_interval = log_interval
        self._next_log = time.monotonic() + self._log_interval
        # Listeners of several processes spread their pruning over the interval.
        self._next_prune = time.monotonic() + PRUNE_INTERVAL * random.uniform(0.1, 1.0)  # noqa: S311

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)
            if self._thread.is_alive():
                log.debug("read cache: listener still waiting on the server; left to exit")

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        delay = _FIRST_RETRY
        outage_since: float | None = None
        warned = False
        while not self._stop.is_set():
            self._established = False
            try:
                self._connect_and_listen()
                continue  # stopped
            except psycopg.Error as error:
                reason = self._cache.connection.scrub(first_line(str(error)))
            except Exception as error:  # a bug must not end the thread: step aside, retry
                log.exception("read cache: listener failed")
                reason = f"listener failed: {type(error).__name__}"
            finally:
                self.connected = False
            self._cache.on_down(reason)
            now = time.monotonic()
            if self._established:
                delay = _FIRST_RETRY  # it was working: reconnect at once
                outage_since, warned = now, False
            elif outage_since is None:
                outage_since = now
            where = self._cache.connection.describe()
            # A short outage (a reconnect, a server restart, a process ending
            # under a dropped database) is worth an INFO line; one that outlasts
            # the staleness bound leaves the cache off, which an operator must see.
            if not warned and now - outage_since > self._cache.max_staleness:
                warned = True
                log.warning(
                    "read cache: listener cannot listen on %s for %.0fs (%s); "
                    "reads go to the database until it can",
                    where,
                    now - outage_since,
                    reason,
                )
            elif self._established or now == outage_since:
                log.info(
                    "read cache: listener %s %s (%s); reconnecting, reads go to the database "
                    "meanwhile",
                    "lost its connection to" if self._established else "cannot listen on",
                    where,
                    reason,
                )
            self._maybe_log_stats()
            self._stop.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            delay = min(delay * 2, _LAST_RETRY)
        self._cache.on_down("closed")

    def _connect_and_listen(self) -> None:
        with psycopg.connect(self._cache.connection.conninfo(), autocommit=True) as conn:
            self.connected = True
            self._listen(conn)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        cache = self._cache
        conn.execute(f"LISTEN {CHANNEL}")
        # After LISTEN every commit is heard; whatever committed before is flushed.
        cache.on_connect()
        sent, counters = self._poll(conn)
        cache.baseline(counters)
        self._drain(conn)
        cache.on_heartbeat(sent, counters, [])
        self._established = True
        next_beat = sent + self._interval
        while not self._stop.is_set():
            wait = min(max(0.0, next_beat - time.monotonic()), _TICK)
            for notify in conn.notifies(timeout=wait):
                if notify.channel == CHANNEL:
                    cache.on_notice(notify.payload)
            if self._wake.is_set() or time.monotonic() >= next_beat:
                self._wake.clear()
                next_beat = self._heartbeat(conn) + self._interval
            self._maybe_log_stats()

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> float:
        sent, counters = self._poll(conn)
        self._drain(conn)
        behind = self._cache.behind(counters)
        if behind:
            # Notices of commits the poll saw may arrive just after its answer:
            # one more round trip lets them in before calling anything missed.
            self._poll(conn)
            self._drain(conn)
            behind = self._cache.behind({row: counters[row] for row in behind})
        self._cache.on_heartbeat(sent, counters, behind)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL
            conn.execute(_PRUNE)
        return sent

    def _poll(self, conn: psycopg.Connection[Any]) -> tuple[float, Polled]:
        sent = time.monotonic()
        rows = conn.execute(_POLL).fetchall()
        if node_read_only(conn.pgconn):
            # A failover that left this server up (fenced read-only, or a standby now):
            # the writers' commits go elsewhere, so its answers prove nothing. Reconnect;
            # target_session_attrs=read-write finds the new primary.
            raise psycopg.OperationalError("the listener's server became read-only (a failover)")
        return sent, {
            (str(name), int(writer)): (int(counter), int(ms)) for name, writer, counter, ms in rows
        }

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        for notify in conn.notifies(timeout=0):
            if notify.channel == CHANNEL:
                self._cache.on_notice(notify.payload)

    def _maybe_log_stats(self) -> None:
        if self._log_interval > 0 and time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self._log_interval
            self._cache.stats(log_line=True)
