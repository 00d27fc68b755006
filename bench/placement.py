"""Where the bench and the servers it starts run: on cores of their own.

A round trip to a backend that the scheduler happens to run on the client's
core takes a third of one that crosses cores (17 µs against 55 µs for
``SELECT 1`` here, unix socket), and each connection has its own backend, so
the floor's connection and omejdn_pg's could land differently: ratios jumped
by 2x between runs, and 8 threads sometimes did less than 1. The bench
therefore keeps its own threads and subprocesses on the first core it may use
and the servers it starts (the embedded PostgreSQL, the standby rig,
PgBouncer) on the others, so every round trip crosses cores, as it does to a
database on its own machine. A server named by ``OMEJDN_PG_BENCH_DSN`` is not
the bench's to place; with one core there is nothing to split.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

_CAN_PIN: Final = hasattr(os, "sched_setaffinity")


@dataclass(frozen=True)
class Placement:
    """The cores of the bench process and of the servers it starts."""

    bench: frozenset[int]
    servers: frozenset[int]

    @classmethod
    def split(cls) -> Placement | None:
        """The first usable core for the bench, the rest for servers; None if one core."""
        if not _CAN_PIN:
            return None
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return None
        return cls(bench=frozenset(cores[:1]), servers=frozenset(cores[1:]))

    def pin_bench(self) -> None:
        """Keep this thread, and every thread and process it starts from now on, on
        :attr:`bench` (Linux gives a new thread or child its creator's cores)."""
        os.sched_setaffinity(0, self.bench)

    def describe(self) -> dict[str, Any]:
        return {"bench_cores": sorted(self.bench), "server_cores": sorted(self.servers)}


@contextmanager
def starting_servers(placement: Placement | None) -> Iterator[None]:
    """Processes started inside run on the servers' cores (they inherit them at fork)."""
    if placement is None:
        yield
        return
    with on_cores(placement.servers):
        yield


@contextmanager
def on_cores(cores: frozenset[int]) -> Iterator[None]:
    """This thread, and the processes it starts inside, on ``cores``; as before after."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def all_cores(placement: Placement | None) -> frozenset[int]:
    """Every core this run may use: the bench's and the servers' when placed, else this
    thread's own (nothing was pinned)."""
    if placement is not None:
        return placement.bench | placement.servers
    return frozenset(os.sched_getaffinity(0)) if _CAN_PIN else frozenset()


def unplaced(reason: str) -> dict[str, Any]:
    return {"bench_cores": None, "server_cores": None, "reason": reason}
