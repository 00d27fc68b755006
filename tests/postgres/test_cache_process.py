"""The read cache across real processes: a write here is seen by a cache over there.

The measurement is the bench's (``bench/staleness.py``, a row of ``python -m bench``):
the other process is ``python -m bench.staleness reader PLUGINS``, which reads a section
through its cache and reports each new value with its ``time.monotonic()``. Here it
runs on this test's own database and only the bound is asserted, never a typical delay:
the machine is shared.
"""

from __future__ import annotations

from pathlib import Path

from bench import staleness
from omejdn_pg.settings.connection import ConnectionSettings

MARGIN = 1.0
"""Seconds beyond the bound a loaded machine may take to schedule the reader."""


def test_a_write_is_seen_by_another_process_within_the_bound(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    found = staleness.measure(database, 20, tmp_path)
    assert found["writes"] == 20
    assert found["max_s"] <= found["max_staleness_s"] + MARGIN, found
    stats = found["reader"]
    assert stats["hits"] > 0, stats
    # Each write was heard as a notice, not caught late by the poll of the counters.
    assert stats["notices"] >= 20, stats
