"""Where a point read's time goes: cProfile over many calls, grouped by layer.

Each function's own time (``tottime``) is charged to the layer its file
belongs to — omejdn_pg, SQLAlchemy, the psycopg driver, the standard library
— and psycopg's ``Connection.wait`` separately: it drives libpq and blocks on
the socket (psycopg's C waiting loop is invisible to cProfile), so its own
time is the round trip to the server. Built-in functions have no file; their
time is charged to the layers that called them, in proportion. cProfile slows
Python code down several times and C code not at all, so the shares say where
to look, not what a call costs; the latency table says that.
"""

from __future__ import annotations

import cProfile
import pstats
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

Call = Callable[[], object]
_REPOSITORY: Final = str(Path(__file__).resolve().parents[1]) + "/"
FunctionKey = tuple[str, int, str]

WAIT: Final = "server round trip (psycopg wait)"
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
        return WAIT if path.endswith("/connection.py") and name == "wait" else "psycopg (driver)"
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
