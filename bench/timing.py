"""Timing: per-call latencies interleaved in blocks, and throughput under threads.

A shared two-core machine drifts by tens of percent within a minute, so two
sides timed one after the other can differ by more than the thing measured.
:func:`interleave` runs the sides in alternating blocks (A B A B …), each call
timed alone with ``perf_counter_ns``, so whatever slows the machine down
slows every side in the same proportion; the ratio of the medians is then
stable where the microseconds are not. p99 is reported as seen: it includes
the garbage collector and the neighbours, as production would.
"""

from __future__ import annotations

import gc
import math
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Call = Callable[[], object]


@dataclass(frozen=True)
class Latency:
    """Per-call latencies of one side of a case, in nanoseconds."""

    samples: tuple[int, ...]

    @property
    def median_us(self) -> float:
        return statistics.median(self.samples) / 1e3

    @property
    def p99_us(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)] / 1e3

    @property
    def mean_us(self) -> float:
        return statistics.fmean(self.samples) / 1e3

    def summary(self) -> dict[str, Any]:
        return {
            "median_us": round(self.median_us, 2),
            "p99_us": round(self.p99_us, 2),
            "mean_us": round(self.mean_us, 2),
            "calls": len(self.samples),
        }


def interleave(sides: Sequence[Call], calls: int, blocks: int, warmup: int) -> list[Latency]:
    """Latencies of ``calls`` calls of each side, run in ``blocks`` alternating blocks."""
    for side in sides:
        for _ in range(warmup):
            side()
    blocks = max(1, min(blocks, calls))
    per_block = math.ceil(calls / blocks)
    samples: list[list[int]] = [[] for _ in sides]
    clock = time.perf_counter_ns
    gc.collect()
    for _ in range(blocks):
        for side, found in zip(sides, samples, strict=True):
            for _ in range(per_block):
                began = clock()
                side()
                found.append(clock() - began)
    return [Latency(tuple(found)) for found in samples]


@dataclass(frozen=True)
class Throughput:
    threads: int
    seconds: float
    operations: int
    errors: int
    first_error: str | None

    @property
    def ops_per_s(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "threads": self.threads,
            "ops_per_s": round(self.ops_per_s, 1),
            "operations": self.operations,
            "errors": self.errors,
            "first_error": self.first_error,
            "seconds": round(self.seconds, 3),
        }


def throughput(make_call: Callable[[int], Call], threads: int, seconds: float) -> Throughput:
    """Operations per second of ``threads`` threads, each calling ``make_call(i)`` in a loop.

    Every thread starts at one barrier and stops at one deadline; an exception
    counts as an error (the first is kept) and the loop goes on.
    """
    calls = [make_call(index) for index in range(threads)]
    counts = [0] * threads
    errors = [0] * threads
    first_error: list[str] = []
    barrier = threading.Barrier(threads + 1)
    deadline = [0.0]

    def work(index: int) -> None:
        call = calls[index]
        barrier.wait()
        stop = deadline[0]
        done = failed = 0
        clock = time.perf_counter
        while clock() < stop:
            try:
                call()
                done += 1
            except Exception as error:
                failed += 1
                if not first_error:
                    first_error.append(f"{type(error).__name__}: {error}")
        counts[index], errors[index] = done, failed

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    barrier.wait()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - began
    return Throughput(
        threads, elapsed, sum(counts), sum(errors), first_error[0] if first_error else None
    )
