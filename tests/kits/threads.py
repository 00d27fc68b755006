"""Threads released together, for the concurrency tests: results and errors returned,
never lost in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

WRITERS = 8


def run_together(count: int, work: Callable[[int], T]) -> list[T | BaseException]:
    """Run ``work(0..count-1)`` in threads released at once; errors are returned."""
    barrier = threading.Barrier(count)

    def start(n: int) -> T | BaseException:
        barrier.wait()
        try:
            return work(n)
        except Exception as error:
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(start, range(count)))


def read_while_writing(
    write: Callable[[int], None], read: Callable[[], T], *, writers: int = 8, readers: int = 2
) -> tuple[list[T], list[BaseException]]:
    """Run ``write(0..writers-1)`` in threads while ``readers`` threads call ``read``
    again and again until every writer is done.

    Returns what the readers saw and whatever any thread raised.
    """
    failures: list[BaseException] = []
    seen: list[T] = []
    done = threading.Event()

    def writer(index: int) -> None:
        try:
            write(index)
        except BaseException as error:
            failures.append(error)

    def reader() -> None:
        try:
            while not done.is_set():
                seen.append(read())
        except BaseException as error:
            failures.append(error)

    reader_threads = [threading.Thread(target=reader) for _ in range(readers)]
    writer_threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in reader_threads + writer_threads:
        thread.start()
    for thread in writer_threads:
        thread.join()
    done.set()
    for thread in reader_threads:
        thread.join()
    return seen, failures
