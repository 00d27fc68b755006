"""The ``watch`` change stream: the read cache's invalidations, told to a client.

A Ruby process may keep configuration sections and key sets only while it
hears from this stream: "changed" when the service's read cache dropped
entries of a group (its own writes, any other writer's notice, a flush after
a reconnect or a missed notice) and "alive" at least every ``interval``. The
stream ends when the cache stops serving (no heartbeat from its listener
within ``max_staleness``), so a client that keeps answers only while its
stream is open steps aside exactly when the service's cache does.

The trade-off: one thread per watching connection, woken by the cache's hook
(:meth:`ReadCache.subscribe`) and by its own clock — a handful of watchers per
Omejdn process, so threads cost nothing worth a selector.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

from omejdn_pg.postgres.cache.read_cache import ReadCache
from omejdn_pg.postgres.schema import CHANGE_GROUPS

TICK: Final = 0.05
"""Longest wait between two looks at the cache's serving state, in seconds."""


class Pending:
    """Groups changed since the watcher last looked (``None`` in the set: all of them)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._groups: set[str] = set()
        self._all = False

    def __call__(self, groups: frozenset[str] | None) -> None:
        # Runs under the cache's lock: record and return.
        with self._condition:
            if groups is None:
                self._all = True
            else:
                self._groups |= groups
            self._condition.notify()

    def take(self, timeout: float) -> list[str]:
        """The changed groups, waiting up to ``timeout`` for one; [] if none changed."""
        with self._condition:
            if not self._all and not self._groups:
                self._condition.wait(timeout)
            found = sorted(CHANGE_GROUPS) if self._all else sorted(self._groups)
            self._groups.clear()
            self._all = False
            return found


def stream(
    cache: ReadCache,
    send: Callable[[str, dict[str, object]], None],
    stopping: threading.Event,
    interval: float,
) -> str:
    """Send "changed" and "alive" notifications until the cache stops serving, the
    service stops or ``send`` fails; returns why it ended."""
    pending = Pending()
    unsubscribe = cache.subscribe(pending)
    try:
        last = time.monotonic()
        while not stopping.is_set():
            groups = pending.take(min(TICK, interval))
            if not cache.serving:
                send("changed", {"groups": sorted(CHANGE_GROUPS)})
                return "the read cache stopped serving"
            if groups:
                send("changed", {"groups": groups})
                last = time.monotonic()
            elif time.monotonic() - last >= interval:
                send("alive", {})
                last = time.monotonic()
        return "the service is stopping"
    finally:
        unsubscribe()
