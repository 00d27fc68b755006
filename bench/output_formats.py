"""``omejdn-pg users list -o json|yaml|table`` as an operator runs it, at 20,000 users.

What an operator waits for when listing every user: a subprocess of the console
script with ``--url``, the interpreter's start-up, the listing's one statement and
the formatting of every record included. The formats differ only in that last
part, so their ratios to JSON say what each format's writer costs: the project
accepts ``-o yaml`` within 2x ``-o json`` (``yaml_within_2x_json`` in the JSON).

The users are COPY-seeded (:func:`bench.seed.seed_users`) into a database of
their own, dropped after. Each format first runs once with its output kept and
checked (every user is there: JSON parses to N records, YAML has N top-level
items, the table N rows under its heading); that run also warms the page cache
and the server's buffers. Then the formats take turns (json, yaml, table, json,
...; :func:`bench.timing.interleave`), so a machine that slows down slows all
three alike, and the medians are reported. Timed runs write to ``/dev/null``:
a pipe would need a reader, and on the bench's one core that reader would
compete with the command it times. The command runs where the bench's
subprocesses run (the bench's core, the server on the others), like the import
rows: one thread of Python, the server's work crossing cores as it would to a
database on its own machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from typing import Any, Final

from bench import importing, seed
from bench.seed import PasswordHashes
from bench.server import Server
from bench.timing import Call, interleave
from omejdn_pg.settings.connection import ConnectionSettings

FORMATS: Final = ("json", "yaml", "table")
YAML_BOUND: Final = 2.0
"""The acceptance: ``-o yaml`` takes at most this many times ``-o json``."""


def arguments(settings: ConnectionSettings, fmt: str) -> list[str]:
    return [*importing.command(), "--url", settings.conninfo(), "users", "list", "-o", fmt]


def _listed(settings: ConnectionSettings, fmt: str, keep: bool) -> bytes:
    """Run the listing once; its stdout if ``keep``, else written to ``/dev/null``."""
    env = {k: v for k, v in os.environ.items() if k not in importing.SCRUBBED_ENV}
    done = subprocess.run(  # checked below, its stderr in the message
        arguments(settings, fmt),
        stdout=subprocess.PIPE if keep else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"omejdn-pg users list -o {fmt} exited {done.returncode}: "
            f"{done.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return done.stdout or b""


def records_in(fmt: str, output: bytes) -> int:
    """How many users ``output`` of ``-o fmt`` lists."""
    text = output.decode("utf-8")
    if fmt == "json":
        return len(json.loads(text))
    if fmt == "yaml":
        # Each record of the block-style list starts a line with "- "; nothing else does.
        return sum(1 for line in text.splitlines() if line.startswith("- "))
    return len(text.splitlines()) - 1  # under the heading


def measure(server: Server, users: int, hashes: PasswordHashes, runs: int) -> dict[str, Any]:
    """Seed ``users`` users, check each format once, then time ``runs`` runs of each, taking
    turns; medians and the ratios to JSON."""
    database = server.database("output_formats")
    try:
        seed.seed_users(database, 0, users, hashes)
        sizes = {}
        for fmt in FORMATS:
            output = _listed(database, fmt, keep=True)
            found = records_in(fmt, output)
            if found != users:
                raise RuntimeError(f"users list -o {fmt} listed {found} of {users} users")
            sizes[fmt] = len(output)

        def side(fmt: str) -> Call:
            return lambda: _listed(database, fmt, keep=False)

        timed = interleave([side(fmt) for fmt in FORMATS], calls=runs, blocks=runs, warmup=0)
    finally:
        server.drop(database)
    seconds = {
        fmt: [ns / 1e9 for ns in latency.samples]
        for fmt, latency in zip(FORMATS, timed, strict=True)
    }
    medians = {fmt: statistics.median(found) for fmt, found in seconds.items()}
    rows = [
        {
            "format": fmt,
            "median_s": round(medians[fmt], 3),
            "min_s": round(min(seconds[fmt]), 3),
            "max_s": round(max(seconds[fmt]), 3),
            "runs_s": [round(value, 3) for value in seconds[fmt]],
            "users_per_s": round(users / medians[fmt], 1),
            "bytes": sizes[fmt],
            "over_json": round(medians[fmt] / medians["json"], 3),
        }
        for fmt in FORMATS
    ]
    yaml_over_json = medians["yaml"] / medians["json"]
    return {
        "command": "omejdn-pg --url URL users list -o FORMAT > /dev/null",
        "users": users,
        "runs": runs,
        "rows": rows,
        "yaml_over_json": round(yaml_over_json, 3),
        "table_over_json": round(medians["table"] / medians["json"], 3),
        "yaml_bound": YAML_BOUND,
        "yaml_within_2x_json": yaml_over_json <= YAML_BOUND,
    }


def table_rows(found: dict[str, Any]) -> list[list[str]]:
    """The printed table's rows (format, median, min, users/s, MB, / json)."""
    return [
        [
            f"-o {row['format']}",
            f"{row['median_s']:.2f} s",
            f"{row['min_s']:.2f} s",
            f"{row['users_per_s']:,.0f}",
            f"{row['bytes'] / 1e6:.1f} MB"
            if row["bytes"] >= 1e6
            else f"{row['bytes'] / 1e3:.0f} kB",
            f"{row['over_json']:.2f}x",
        ]
        for row in found["rows"]
    ]


def draw(axes: Any, found: dict[str, Any]) -> None:
    """Median seconds per format, each bar with its rate and ratio; the YAML bound marked."""
    rows = found["rows"]
    positions = list(range(len(rows)))[::-1]
    medians = [row["median_s"] for row in rows]
    colours = {"json": "tab:blue", "yaml": "tab:orange", "table": "tab:green"}
    axes.barh(positions, medians, color=[colours[row["format"]] for row in rows])
    for position, row in zip(positions, rows, strict=True):
        axes.annotate(
            f"{row['median_s']:.2f} s · {row['users_per_s']:,.0f} users/s · "
            f"{row['over_json']:.2f}x json",
            (row["median_s"], position),
            xytext=(4, -4),
            textcoords="offset points",
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )
    json_s = next(row["median_s"] for row in rows if row["format"] == "json")
    bound = json_s * found["yaml_bound"]
    axes.axvline(bound, color="red", linestyle="--", linewidth=1, label="yaml bound: 2x json")
    axes.set_xlim(0, max([*medians, bound]) * 1.7)
    axes.set_yticks(positions, [f"-o {row['format']}" for row in rows])
    axes.set_xlabel("seconds, whole command (median; start-up included)")
    axes.set_title(
        f"(d) omejdn-pg users list, {found['users']:,} users, subprocess "
        f"(median of {found['runs']}, interleaved)",
        fontsize=10,
    )
    axes.legend(loc="lower right", fontsize=8)
