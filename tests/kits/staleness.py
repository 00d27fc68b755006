"""The read cache's bound, asserted so that no schedule can fail it and no stale read passes.

The promise: a change whose commit returned at T is served by no cache from
T + ``max_staleness`` on. A read that *began* at ``asked`` and answered with the
value that change replaced was served at some moment at or after ``asked``, and
the commit returned at or before the writer's clock reading just after it. So
``asked - committed >= bound`` for such a read is a broken promise on any
schedule, and ``asked - committed < bound`` is all the promise allows: no
margin is needed, and none is taken. On Linux ``time.monotonic()`` is one clock
for every process, so the same holds across processes.

What a loaded machine can delay without breaking anything — the listener's
reconnect, a fill, a log line — is waited for with :func:`until`, which only
gives up when something never happens. Which way a cache learnt of a change
(a notice, a gap in a chain, a poll) is read from what its listener hands it
(:func:`notices_heard`, :func:`heartbeats`), not from timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from omejdn_pg.postgres.cache.changes import Notice, Polled, Row
from omejdn_pg.postgres.cache.read_cache import ReadCache

GIVE_UP = 60.0
"""Seconds after which :func:`until` calls a thing that should happen stuck (never a
claim about how fast it happens)."""


def served_late(asked: float, committed: float) -> float:
    """How long after ``committed`` a read asked at ``asked`` was: the read's answer was
    replaced by the commit that returned then, so a cache may have served it only while
    this stays below the bound."""
    return asked - committed


def fresh_within(
    bound: float, fresh: Callable[[], bool], since: float | None = None, what: str = ""
) -> float:
    """Read until ``fresh()``; fail on the first stale read asked ``bound`` seconds or more
    after ``since`` (the clock read after the change's commit returned; default: now,
    which is after it when called right after the write). Returns the last read's lateness.

    It ends at the first read asked past the bound, so it needs no time-out of its own."""
    since = time.monotonic() if since is None else since
    while True:
        asked = time.monotonic()
        if fresh():
            return served_late(asked, since)
        late = served_late(asked, since)
        assert late < bound, f"stale {late:.3f}s after the commit, bound {bound}s {what}"
        time.sleep(0.002)


def until(check: Callable[[], Any], what: str, give_up: float = GIVE_UP) -> Any:
    """Poll ``check()`` until it returns something true, and return that; fails only if it
    has not after ``give_up`` seconds (something that never happens, not something slow)."""
    deadline = time.monotonic() + give_up
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not after {give_up:g}s"
        time.sleep(0.005)


def notices_heard(cache: ReadCache) -> list[Notice]:
    """Every notice ``cache``'s listener hands it from now on, in order."""
    heard: list[Notice] = []
    deliver = cache.on_notice

    def record(payload: str) -> None:
        notice = Notice.parse(payload)
        if notice is not None:
            heard.append(notice)
        deliver(payload)

    cache.on_notice = record  # type: ignore[method-assign]
    return heard


@dataclass
class Heartbeats:
    """What the polls of a cache's listener answered, from when :func:`heartbeats` was called."""

    polled: list[Polled] = field(default_factory=list)
    """Each poll's counter rows, in order."""
    behind: list[Row] = field(default_factory=list)
    """Every row a poll found changed without the notices that would reach its value (so
    its group was flushed)."""


def heartbeats(cache: ReadCache) -> Heartbeats:
    """Record the heartbeats ``cache``'s listener hands it from now on."""
    seen = Heartbeats()
    beat = cache.on_heartbeat

    def record(sent: float, counters: Polled, behind: Iterable[Row]) -> None:
        rows = list(behind)
        seen.polled.append(dict(counters))
        seen.behind.extend(rows)
        beat(sent, counters, rows)

    cache.on_heartbeat = record  # type: ignore[method-assign]
    return seen
