"""Where a point read's time goes: layers peeled off one by one, and cProfile.

:func:`layers` times the same read three ways, interleaved and unprofiled:
the floor (raw psycopg), then through the direct read path (``Database.query``
handing its pooled autocommit connection the same SQL), then the event itself
(the statement compiled once, repository, entity, plugin adapter,
``loader.fire``). Each step's increment is what that layer costs, in
microseconds. Two more rows, for comparison and outside the chain, run the
same SQL the way reads went before the direct path: SQLAlchemy's pool with
``Database.read`` and the raw driver call, then ``Connection.exec_driver_sql``.

:func:`profile` runs cProfile over many calls and charges each function's own
time (``tottime``) to the layer its file belongs to — omejdn_pg, SQLAlchemy,
the psycopg driver, the standard library. The round trip is charged apart:
psycopg's ``Connection.wait`` drives libpq and blocks on the socket, and its
``_send_*`` calls hand the query to libpq, where a machine with few cores
often switches to the woken server process at once (psycopg's C code is
invisible to cProfile, so all of it shows as these functions' own time).
Built-in functions have no file; their time is charged to the layers that
called them, in proportion. cProfile slows Python code down several times and
C code not at all, so its shares say where to look; the layers say how much.
"""

from __future__ import annotations

import cProfile
import pstats
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

from bench.floor import Floor, capture
from bench.timing import interleave
from omejdn_pg.postgres.database.readpool import DirectReader
from omejdn_pg.postgres.database.unit_of_work import Database

Call = Callable[[], object]
_REPOSITORY: Final = str(Path(__file__).resolve().parents[1]) + "/"
FunctionKey = tuple[str, int, str]

WAIT: Final = "server round trip (libpq send + wait)"
_ROUND_TRIP: Final = frozenset({"wait", "_send_query_prepared", "_send_prepare", "_execute_send"})
GROUPS: Final = (
    "omejdn_pg",
    "SQLAlchemy",
    "psycopg (driver)",
    WAIT,
    "cryptography",
    "stdlib",
    "other",
)


def layer(function: FunctionKey) -> str | None:
    """The layer of a function with a file; None for a built-in."""
    filename, _line, name = function
    path = filename.replace("\\", "/")
    if filename == "~" or filename.startswith("<"):
        if name.startswith(("<built-in method keys.", "<built-in method x509.")):
            return "cryptography"
        return None
    if "/psycopg/" in path:
        return WAIT if name in _ROUND_TRIP else "psycopg (driver)"
    if "/sqlalchemy/" in path:
        return "SQLAlchemy"
    if "/omejdn_pg/" in path:
        return "omejdn_pg"
    if "/cryptography/" in path:
        return "cryptography"
    if "site-packages" not in path and "/bench/" not in path and "/python3" in path:
        return "stdlib"
    return "other"


def profile(call: Call, calls: int) -> dict[str, Any]:
    """Profile ``calls`` calls of ``call``; shares per layer and the top functions."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    stats: dict[FunctionKey, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    shares: defaultdict[str, float] = defaultdict(float)
    for function, (_cc, _nc, own, _cum, callers) in stats.items():
        group = layer(function)
        if group is not None:
            shares[group] += own
            continue
        from_callers = {caller: figures[2] for caller, figures in callers.items()}
        charged = sum(from_callers.values())
        if not charged:
            shares["other"] += own
            continue
        for caller, part in from_callers.items():
            shares[layer(caller) or "other"] += own * part / charged
    rows = [
        {
            "function": _name(function),
            "layer": layer(function) or "built-in",
            "calls": entry[1],
            "tottime_s": round(entry[2], 4),
            "cumtime_s": round(entry[3], 4),
        }
        for function, entry in stats.items()
    ]
    ours = [row for row in rows if row["layer"] == "omejdn_pg"]
    return {
        "calls": calls,
        "profiled_us_per_call": round(total / calls * 1e6, 1),
        "shares": {group: round(shares.get(group, 0.0) / total, 4) for group in GROUPS},
        "top_tottime": sorted(rows, key=lambda r: r["tottime_s"], reverse=True)[:15],
        "top_cumtime_omejdn_pg": sorted(ours, key=lambda r: r["cumtime_s"], reverse=True)[:8],
    }


def _name(function: FunctionKey) -> str:
    filename, line, name = function
    if filename == "~":
        return name
    for marker in ("/site-packages/", _REPOSITORY, "/lib/python3"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{line}({name})"


def layers(database: Database, event: Call, floor: Floor, calls: int) -> list[dict[str, Any]]:
    """One point read four ways, each adding a layer; medians and what each layer adds."""
    event()
    captured = capture(database.engine, event)
    if len(captured) != 1:
        raise AssertionError(f"a point read sent {len(captured)} statements")
    statement = captured[0]
    sql, params = statement.sql, statement.params

    def direct() -> object:
        return database.query(
            lambda reader: (
                cast(DirectReader, reader).conn.execute(sql, params, prepare=True).fetchall()
            )
        )

    def pooled() -> object:
        return database.read(
            lambda conn: conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                sql, params, prepare=True
            ).fetchall()
        )

    def driver_sql() -> object:
        return database.read(lambda conn: conn.exec_driver_sql(sql, params).fetchall())

    chain = [
        ("raw psycopg, prepared (the floor)", floor.read(captured)),
        ("+ the direct read path: Database.query, raw driver call", direct),
        ("+ compiled statement, repository, entity, plugin, loader.fire", event),
    ]
    compared = [
        ("(compare) SQLAlchemy's pool: Database.read, raw driver call", pooled),
        ("(compare) + SQLAlchemy Connection.exec_driver_sql", driver_sql),
    ]
    sides = chain + compared
    measured = interleave([side for _, side in sides], calls, blocks=20, warmup=50)
    rows: list[dict[str, Any]] = []
    previous = 0.0
    for index, ((name, _), latency) in enumerate(zip(sides, measured, strict=True)):
        median = latency.median_us
        if index == len(chain):
            previous = measured[0].median_us  # the comparison adds to the floor
        rows.append(
            {"layer": name, "median_us": round(median, 1), "adds_us": round(median - previous, 1)}
        )
        previous = median
    return rows
