"""The read cache itself: entries served only while its listener's last heartbeat is fresh.

An entry is served only while the last successful heartbeat was *sent* less
than ``max_staleness`` ago; everything committed before that send is
reflected by then, which is the bound the package promises
(:mod:`omejdn_pg.postgres.cache`). Otherwise the cache steps aside: reads go
to the database and nothing read meanwhile is kept. A miss fills the cache
only if no invalidation ran while it read (an epoch compare) and only from an
AUTOCOMMIT read, never from inside a batch or snapshot, whose view may never
commit. Entries are bounded by ``max_entries`` (least recently used first).
Negative answers are kept for configuration and keys (a small, host-chosen
key space) but not for users and clients, whose names come from the network.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from omejdn_pg.postgres.cache.changes import Chains, Notice, Polled, Row
from omejdn_pg.postgres.cache.copies import Copier, freeze
from omejdn_pg.postgres.cache.entries import CacheKey, affected, belongs, group_of
from omejdn_pg.postgres.cache.listener import Listener, listener_connection
from omejdn_pg.postgres.cache.stats import SAMPLES, log_stats, percentiles
from omejdn_pg.postgres.cache.watch import KeyWriteWatch
from omejdn_pg.postgres.schema import CHANGE_GROUPS
from omejdn_pg.settings.backend import CacheSettings
from omejdn_pg.settings.connection import ConnectionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Miss:
    """What :meth:`ReadCache.get` returns when it has no answer."""

    token: int | None
    """Hand it to :meth:`ReadCache.fill` with the value read; None: do not fill."""


class ReadCache:
    """Entries, their invalidation, and the listener thread that keeps them honest."""

    def __init__(
        self,
        settings: CacheSettings,
        connection: ConnectionSettings,
        *,
        groups: Iterable[str] | None = None,
    ) -> None:
        self.settings = settings
        self.groups = frozenset(settings.groups if groups is None else groups) & set(CHANGE_GROUPS)
        self.max_staleness = settings.max_staleness
        self.connection = listener_connection(connection, settings)
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, Copier] = OrderedDict()
        self._epoch = 0
        """Bumped by every invalidation: a fill that read before one is not kept."""
        self._fresh_until = 0.0
        """Monotonic time until which entries may be served (last heartbeat's send + bound)."""
        self._serving = False
        self._chains = Chains()
        """The counter rows as last polled, and the links heard since."""
        self._hits = dict.fromkeys(CHANGE_GROUPS, 0)
        self._misses = dict.fromkeys(CHANGE_GROUPS, 0)
        self._counts = dict.fromkeys(
            (
                "bypassed",
                "fills",
                "fills_dropped",
                "evictions",
                "invalidations",
                "notices",
                "flushes",
                "step_asides",
                "connects",
                "heartbeats",
                "gaps",
            ),
            0,
        )
        self._staleness: deque[float] = deque(maxlen=SAMPLES)
        self._last_heartbeat: float | None = None
        self._closed = False
        self._listener = Listener(self, settings.log_interval)
        self._watch: KeyWriteWatch | None = None
        self._subscribers: list[Callable[[frozenset[str] | None], None]] = []

    def __repr__(self) -> str:
        return (
            f"ReadCache(groups={sorted(self.groups)}, max_staleness={self.max_staleness}, "
            f"listener={self.connection.describe()})"
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> ReadCache:
        self._listener.start()
        return self

    def watch_key_writes(self, engine: Engine) -> None:
        """Drop key entries after any transaction of ``engine`` that wrote ``keys`` ends."""
        if self._watch is None:
            self._watch = KeyWriteWatch(engine, self.invalidate)

    def close(self) -> None:
        """Stop the listener (its connection closes with it) and serve nothing more."""
        self._closed = True
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._listener.stop()
        with self._lock:
            self._fresh_until = 0.0
            self._serving = False
            self._entries.clear()
            self._epoch += 1

    def subscribe(self, listener: Callable[[frozenset[str] | None], None]) -> Callable[[], None]:
        """Call ``listener(groups)`` whenever entries of ``groups`` are dropped; returns the
        unsubscribe. ``None`` means every group: a flush (a reconnect, a notice that may have
        been missed), the cache stepping aside or closing. Called on the listener's or a
        writer's thread with the cache's lock held, so it must only record and return; it
        is not told when the cache stops serving for want of a heartbeat (ask
        :attr:`serving`).
        """
        with self._lock:
            self._subscribers.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._subscribers:
                    self._subscribers.remove(listener)

        return unsubscribe

    def _tell_locked(self, groups: frozenset[str] | None) -> None:
        for listener in self._subscribers:
            try:
                listener(groups)
            except Exception:  # a subscriber never breaks invalidation
                log.exception("read cache: a change subscriber failed")

    def wait_until_serving(self, timeout: float) -> bool:
        """Block until the listener has connected and polled (or ``timeout`` seconds pass)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serving:
                return True
            time.sleep(0.01)
        return self.serving

    @property
    def serving(self) -> bool:
        return time.monotonic() <= self._fresh_until

    def caches(self, group: str) -> bool:
        return group in self.groups

    # --- reads -----------------------------------------------------------------------

    def get(self, key: CacheKey, group: str | None = None) -> Any:
        """A copy of the cached answer for ``key`` (of ``group``), or a :class:`Miss`."""
        group = group or group_of(key)
        with self._lock:
            if time.monotonic() > self._fresh_until:
                self._counts["bypassed"] += 1
                stepped = self._step_aside_locked()
                entry = None
                token = None
            else:
                entry = self._entries.get(key)
                if entry is None:
                    self._misses[group] += 1
                    token = self._epoch
                else:
                    self._entries.move_to_end(key)
                    self._hits[group] += 1
                stepped = False
        if stepped:
            log.warning(
                "read cache: no heartbeat from its listener within %gs; "
                "reads go to the database until it is back",
                self.max_staleness,
            )
        if entry is None:
            return Miss(token)
        return entry()

    def fill(self, key: CacheKey, value: Any, token: int | None) -> None:
        """Keep ``value`` (read after :meth:`get` gave ``token``) unless something changed since."""
        if token is None:
            return
        try:
            entry = freeze(value)
        except (TypeError, ValueError, pickle.PicklingError, AttributeError):
            log.debug("read cache: %s cannot be copied; not cached", key[0], exc_info=True)
            return
        with self._lock:
            if token != self._epoch or time.monotonic() > self._fresh_until:
                self._counts["fills_dropped"] += 1
                return
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._counts["fills"] += 1
            while len(self._entries) > self.settings.max_entries:
                self._entries.popitem(last=False)
                self._counts["evictions"] += 1

    # --- invalidation ------------------------------------------------------------------

    def invalidate(self, group: str, key: Sequence[str] | None) -> None:
        """Drop what a write of this process changed (before the write returns)."""
        with self._lock:
            self._drop_locked(group, tuple(key) if key is not None else None)

    def _drop_locked(self, group: str, key: tuple[str, ...] | None) -> int:
        entries = affected(group, key) if key is not None else None
        self._epoch += 1
        if entries is None:
            doomed = [entry for entry in self._entries if belongs(entry, group)]
        else:
            doomed = [entry for entry in entries if entry in self._entries]
        for entry in doomed:
            del self._entries[entry]
        self._counts["invalidations"] += len(doomed)
        self._tell_locked(frozenset((group,)))
        return len(doomed)

    def _flush_locked(self, groups: Iterable[str] | None = None) -> None:
        self._epoch += 1
        self._counts["flushes"] += 1
        if groups is None:
            self._entries.clear()
            self._tell_locked(None)
            return
        for group in groups:
            self._drop_locked(group, None)

    def _step_aside_locked(self) -> bool:
        """Note that the cache stopped serving; True the first time per outage."""
        if not self._serving:
            return False
        self._serving = False
        self._counts["step_asides"] += 1
        return True

    # --- the listener's side (:class:`~.listener.Receiver`), on its thread --------------

    def on_connect(self) -> None:
        with self._lock:
            self._counts["connects"] += 1
            self._flush_locked()

    def on_down(self, reason: str) -> bool:
        """The listener lost (or could not get) its connection; True if that ends serving."""
        with self._lock:
            self._fresh_until = 0.0
            self._entries.clear()
            self._epoch += 1
            self._tell_locked(None)
            return self._step_aside_locked()

    def baseline(self, counters: Polled) -> None:
        with self._lock:
            self._chains.reset({row: counter for row, (counter, _) in counters.items()})

    def on_notice(self, payload: str) -> None:
        notice = Notice.parse(payload)
        received_ms = time.time() * 1000
        with self._lock:
            self._counts["notices"] += 1
            if notice is None:
                log.warning("read cache: unreadable notice %r; flushing everything", payload[:200])
                self._flush_locked()
                return
            if notice.link is not None and not self._chains.heard(notice.group, notice.link):
                # The writer counted a transaction in between whose notice never came.
                self._counts["gaps"] += 1
                self._flush_locked([notice.group])
            self._drop_locked(notice.group, notice.key)
            if notice.sent_ms is not None:
                self._staleness.append(max(0.0, received_ms - notice.sent_ms))

    def behind(self, counters: Polled) -> set[Row]:
        with self._lock:
            return self._chains.behind({row: counter for row, (counter, _) in counters.items()})

    def on_heartbeat(self, sent: float, counters: Polled, behind: Iterable[Row]) -> None:
        """A poll sent at ``sent`` answered; ``behind``: rows it showed changed unheard."""
        received_ms = time.time() * 1000
        missed = sorted({group for group, _ in behind})
        with self._lock:
            self._counts["heartbeats"] += 1
            last = self._last_heartbeat
            if last is not None and sent - last > self.max_staleness:
                # Polls further apart than the bound: counter rows may have been
                # pruned unseen in between, so nothing kept from before may stay.
                self._flush_locked()
            if missed:
                self._flush_locked(missed)
                for row in behind:
                    self._staleness.append(max(0.0, received_ms - counters[row][1]))
            self._chains.advance({row: counter for row, (counter, _) in counters.items()})
            resumed = False
            if self._closed:
                return
            self._fresh_until = max(self._fresh_until, sent + self.max_staleness)
            resumed = not self._serving and time.monotonic() <= self._fresh_until
            if resumed:
                self._serving = True
            self._last_heartbeat = sent
        if missed:
            log.info("read cache: %s changed without a notice; flushed", ", ".join(missed))
        if resumed:
            log.info(
                "read cache: serving %s, invalidated through %s, bound %gs",
                ", ".join(sorted(self.groups)),
                self.connection.describe(),
                self.max_staleness,
            )

    # --- statistics ----------------------------------------------------------------------

    def stats(self, *, log_line: bool = False) -> dict[str, Any]:
        """Counters and gauges for a metrics exporter (and, with ``log_line``, an INFO line)."""
        now = time.monotonic()
        with self._lock:
            counts = dict(self._counts)
            hits = dict(self._hits)
            misses = dict(self._misses)
            samples = sorted(self._staleness)
            entries = len(self._entries)
            last = self._last_heartbeat
            serving = now <= self._fresh_until
        result: dict[str, Any] = {
            "groups": sorted(self.groups),
            "serving": serving,
            "listener_connected": self._listener.connected,
            "entries": entries,
            "max_entries": self.settings.max_entries,
            "max_staleness_ms": self.max_staleness * 1000,
            "hits": sum(hits.values()),
            "misses": sum(misses.values()),
            "hits_by_group": {g: hits[g] for g in sorted(self.groups)},
            "misses_by_group": {g: misses[g] for g in sorted(self.groups)},
            **counts,
            "heartbeat_age_ms": None if last is None else round((now - last) * 1000, 3),
            "staleness_ms": percentiles(samples),
        }
        if log_line:
            log_stats(result)
        return result
