"""What a read cache reports: its counters as one dict for an exporter, and as an INFO line.

Staleness is measured on every notice (server clock at announce to this
process's clock at receipt) and on every change a poll found without its
notice; the percentiles are over the last samples only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

log = logging.getLogger(__name__)

SAMPLES: Final = 10000
"""Staleness samples kept (the most recent)."""


def percentiles(samples: Sequence[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"samples": 0, "p50": None, "p99": None, "max": None}

    def at(fraction: float) -> float:
        return round(samples[min(len(samples) - 1, int(fraction * len(samples)))], 3)

    return {"samples": len(samples), "p50": at(0.5), "p99": at(0.99), "max": round(samples[-1], 3)}


def log_stats(stats: Mapping[str, Any]) -> None:
    """One INFO line of :meth:`~.read_cache.ReadCache.stats`."""
    lookups = stats["hits"] + stats["misses"]
    ratio = f"{100 * stats['hits'] / lookups:.1f}%" if lookups else "-"
    staleness = stats["staleness_ms"]
    log.info(
        "read cache: %s, hits %d (%s), misses %d, bypassed %d, entries %d/%d, "
        "invalidations %d, flushes %d, step-asides %d, staleness p50 %s ms p99 %s ms",
        "serving" if stats["serving"] else "stepped aside",
        stats["hits"],
        ratio,
        stats["misses"],
        stats["bypassed"],
        stats["entries"],
        stats["max_entries"],
        stats["invalidations"],
        stats["flushes"],
        stats["step_asides"],
        staleness["p50"],
        staleness["p99"],
    )
