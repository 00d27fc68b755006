"""Writers side by side: USER_UPDATE throughput with 1 and 16 writers, beside the floor.

Each writer rewrites a user of its own (16 writers: 16 different users), so
nothing but the package's design could make them wait for one another — which
is what this row watches: until revision 0005 every write of a group took its
turn on the group's one counter row. The floor is the same statements each
writer's USER_UPDATE sent (captured from the engine), replayed on one psycopg
connection per writer, one transaction per write, so the triggers that announce
the change run on both sides. Floor and package alternate (floor, ours, floor,
ours) and each side's figure is the mean of its two runs: the machine's drift
hits both sides alike; only the ratio within one run is worth quoting.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench import hosting
from bench.cases import first
from bench.floor import Floor, Statement, capture
from bench.timing import Call, throughput
from omejdn_pg.host import events
from omejdn_pg.settings.connection import ConnectionSettings

COUNTS = (1, 16)


def measure(
    database: ConnectionSettings,
    workdir: Path,
    names: Sequence[str],
    seconds: float,
    counts: Sequence[int] = COUNTS,
) -> dict[str, Any]:
    """Throughput of USER_UPDATE at each writer count, ours and the floor."""
    largest = max(counts)
    if len(names) < largest:
        raise ValueError(f"{largest} writers need {largest} users, got {len(names)}")
    host = hosting.open_host(database, workdir, pool_size=largest)
    floors: list[Floor] = []
    try:
        assert host.postgres is not None
        engine = host.postgres.database.engine
        users = [first(host.loader.fire(events.USER_GET, username=name)) for name in names]
        if any(user is None for user in users[:largest]):
            raise AssertionError("a writer's user was not found")
        fire = host.loader.fire
        captured: list[list[Statement]] = []
        for user in users[:largest]:
            fire(events.USER_UPDATE, user=user)  # warm: its statements are prepared
            captured.append(capture(engine, partial(fire, events.USER_UPDATE, user=user)))

        def ours(index: int) -> Call:
            user = users[index]
            return lambda: fire(events.USER_UPDATE, user=user)

        def floor(index: int) -> Call:
            replay = Floor(database)
            floors.append(replay)
            return replay.write(captured[index])

        rows: list[dict[str, Any]] = []
        for count in counts:
            runs: dict[str, list[dict[str, Any]]] = {"floor": [], "ours": []}
            for side in ("floor", "ours", "floor", "ours"):
                make = floor if side == "floor" else ours
                runs[side].append(throughput(make, count, seconds).summary())
                for replay in floors:
                    replay.close()
                floors.clear()
            mean = {
                side: sum(run["ops_per_s"] for run in found) / len(found)
                for side, found in runs.items()
            }
            rows.append(
                {
                    "writers": count,
                    "ours_ops_per_s": round(mean["ours"], 1),
                    "floor_ops_per_s": round(mean["floor"], 1),
                    "ratio": round(mean["ours"] / mean["floor"], 3) if mean["floor"] else None,
                    "errors": sum(run["errors"] for found in runs.values() for run in found),
                    "runs": runs,
                    "statements": len(captured[0]),
                }
            )
        return {
            "event": "USER_UPDATE",
            "seconds_per_point": seconds,
            "note": "each writer its own user; floor = the captured statements on one "
            "psycopg connection per writer, one transaction per write",
            "rows": rows,
        }
    finally:
        for replay in floors:
            replay.close()
        host.close()
