"""How listing and importing grow with the number of users.

USER_GET_ALL is measured on one database grown in steps (users are added by
COPY up to each size, then ANALYZE), beside its floor and the Ruby plugin's
one-attributes-query-per-user way, interleaved one call at a time. Linear
growth shows as a constant time per user; the N+1 way pays a round trip per
user, which is what the ratio to it measures. Imports are measured by
:mod:`bench.importing`, one fresh database per size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import hosting, seed
from bench.cases import first, ruby_users
from bench.floor import Floor, capture
from bench.seed import PasswordHashes
from bench.server import Server
from bench.timing import interleave
from omejdn_pg.host import events


def calls_for(size: int, repeat: int) -> int:
    """Timed calls per side at ``size`` users: about ``20 * repeat`` users' worth, 3 to 15."""
    return max(3, min(15, 20 * repeat // max(size, 1)))


def get_all_series(
    server: Server, sizes: Sequence[int], hashes: PasswordHashes, workdir: Path, repeat: int
) -> list[dict[str, Any]]:
    database = server.database("growth")
    host = hosting.open_host(database, workdir)
    floor = Floor(database)
    series: list[dict[str, Any]] = []
    try:
        assert host.postgres is not None
        engine = host.postgres.database.engine
        stored = 0
        for size in sorted(set(sizes)):
            seed.seed_users(database, stored, size, hashes)
            stored = size

            def ours() -> list[Any]:
                return host.loader.fire(events.USER_GET_ALL)

            ours()
            captured = capture(engine, ours)
            if len(first(ours())) != size:
                raise AssertionError(f"USER_GET_ALL at {size} users returned another number")
            calls = calls_for(size, repeat)
            measured = interleave(
                [ours, floor.read(captured), lambda: ruby_users(floor)],
                calls=calls,
                blocks=calls,
                warmup=1,
            )
            ours_s, floor_s, ruby_s = (m.median_us / 1e6 for m in measured)
            series.append(
                {
                    "users": size,
                    "statements": len(captured),
                    "ours_s": round(ours_s, 5),
                    "floor_s": round(floor_s, 5),
                    "n_plus_1_s": round(ruby_s, 5),
                    "ratio_to_floor": round(ours_s / floor_s, 3),
                    "n_plus_1_over_ours": round(ruby_s / ours_s, 2),
                    "ours_us_per_user": round(ours_s / size * 1e6, 2),
                    "calls": calls,
                }
            )
    finally:
        floor.close()
        host.close()
        server.drop(database)
    return series
