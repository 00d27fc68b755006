"""Password work of an import on every core: a bounded pool of threads, progress on a terminal.

bcrypt and argon2 release the GIL while they hash or verify, so threads give
a plaintext ``users.yml`` one core per thread without a process pool's start-up
and pickling: an import of N plaintext users costs about N hashes divided by the
workers. The pool is bounded (at most :func:`workers` threads, each handed
one user at a time) and the results keep the order of the input, so an import
plans exactly what it planned with one thread. ``OMEJDN_PG_HASH_WORKERS``
sets the number of threads (1 = in the calling thread, as before); by default
it is the cores this process may run on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

from omejdn_pg.errors import ConfigurationError

T = TypeVar("T")
R = TypeVar("R")

WORKERS_ENV: Final = "OMEJDN_PG_HASH_WORKERS"
PROGRESS_EVERY: Final = 0.5
"""Seconds between two progress lines on a terminal."""


def workers() -> int:
    """Threads for password work: ``$OMEJDN_PG_HASH_WORKERS``, else the usable cores."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        try:
            count = int(configured)
        except ValueError:
            raise ConfigurationError(
                f"{WORKERS_ENV} must be a whole number of threads, got {configured!r}"
            ) from None
        if count < 1:
            raise ConfigurationError(f"{WORKERS_ENV} must be at least 1, got {count}")
        return count
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def map_passwords(work: Callable[[T], R], items: Sequence[T], what: str) -> list[R]:
    """``[work(item) for item in items]`` on :func:`workers` threads, in order; on a
    terminal, ``what`` and the count done go to stderr as the work advances."""
    count = min(workers(), len(items))
    progress = _Progress(what, len(items)) if len(items) > 1 and sys.stderr.isatty() else None
    if count <= 1:
        results = []
        for item in items:
            results.append(work(item))
            if progress is not None:
                progress.step()
    else:
        with ThreadPoolExecutor(max_workers=count, thread_name_prefix="omejdn-pg-hash") as pool:
            results = []
            for result in pool.map(work, items):
                results.append(result)
                if progress is not None:
                    progress.step()
    if progress is not None:
        progress.finish()
    return results


class _Progress:
    def __init__(self, what: str, total: int) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.next = time.monotonic() + PROGRESS_EVERY

    def step(self) -> None:
        self.done += 1
        if time.monotonic() >= self.next:
            self.next = time.monotonic() + PROGRESS_EVERY
            self._show(end="")

    def finish(self) -> None:
        self._show(end="\n")

    def _show(self, *, end: str) -> None:
        print(f"\r{self.what}: {self.done:,}/{self.total:,}", end=end, file=sys.stderr, flush=True)
