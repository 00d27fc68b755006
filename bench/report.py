"""The results: one JSON document per run, and the tables printed from it.

Everything printed is read back from the JSON document, so the terminal and
the file never disagree. Files are named by the run's UTC start time; a quick
run's names end in ``-quick`` (they are not committed, see ``.gitignore``) and
``latest.json`` / ``latest-quick.json`` always hold the last run of each kind.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import output_formats, plaintext_import

_REPOSITORY = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in ("omejdn-pg", "SQLAlchemy", "psycopg", "psycopg-binary", "bcrypt"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "work_tree_clean": _git("status", "--porcelain", "--untracked-files=no") == "",
        "uncommitted_package_files": sorted(
            line[3:]
            for line in (
                _git("status", "--porcelain", "--", "omejdn_pg", "alembic", strip=False) or ""
            ).splitlines()
        ),
    }


def _git(*arguments: str, strip: bool = True) -> str | None:
    try:
        done = subprocess.run(
            ["git", *arguments], cwd=_REPOSITORY, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() if strip else done.stdout


def write(results: dict[str, Any], out: Path, stamp: str, quick: bool) -> Path:
    """``<out>/<stamp>[-quick].json`` and ``latest[-quick].json``; the first path."""
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    text = json.dumps(results, indent=2, sort_keys=False) + "\n"
    path = out / f"{stamp}{suffix}.json"
    path.write_text(text, encoding="utf-8")
    (out / f"latest{suffix}.json").write_text(text, encoding="utf-8")
    return path


def _time(us: float | None) -> str:
    if us is None:
        return "-"
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e4:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} µs"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _waits(round_trips: dict[str, int] | None) -> str:
    """A write's round trips, the package's against the floor's: ``3 / 5``."""
    return "" if round_trips is None else f"{round_trips['ours']} / {round_trips['floor']}"


def _placed(results: dict[str, Any]) -> str:
    placement = results.get("placement") or {}
    if not placement.get("bench_cores"):
        return ""
    cores = ", ".join(str(core) for core in placement["server_cores"])
    return f" (bench on core {placement['bench_cores'][0]}, servers on {cores})"


def print_tables(results: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or CI: no width to fit, keep rows whole
            console = Console(width=150)
    parameters = results["parameters"]
    server = results["server"]
    head = (
        f"{parameters['users']:,} users, {parameters['clients']:,} clients · "
        f"PostgreSQL {server['server_version']} ({server['kind']}, {server['transport']}) · "
        f"{results['machine']['cpu']}, {results['machine']['cores']} cores{_placed(results)}"
    )
    table = Table(title=f"Latency, omejdn_pg vs the floor (raw psycopg, same SQL) · {head}")
    for column in ("case", "stmts", "waits", "ours p50", "ours p99", "floor p50", "floor p99"):
        table.add_column(column, justify="left" if column == "case" else "right")
    table.add_column("ratio p50", justify="right", style="bold")
    table.add_column("ratio p99", justify="right")
    table.add_column("N+1 p50", justify="right")
    table.add_column("N+1 / ours", justify="right")
    for row in results["latency"]:
        n_plus_1 = row.get("n_plus_1")
        table.add_row(
            row["name"],
            str(row["statements"]),
            _waits(row.get("round_trips")),
            _time(row["ours"]["median_us"]),
            _time(row["ours"]["p99_us"]),
            _time(row["floor"]["median_us"]),
            _time(row["floor"]["p99_us"]),
            _ratio(row["ratio_median"]),
            _ratio(row["ratio_p99"]),
            _time(n_plus_1["median_us"]) if n_plus_1 else "",
            _ratio(row.get("n_plus_1_over_ours")) if n_plus_1 else "",
        )
    for row in results["cached"]["rows"]:
        if row["median_us"] is None:
            table.add_row(
                f"{row['name']} (cached)", "", "", "null", "null", "", "", "null", "", "", ""
            )
            continue
        table.add_row(
            f"{row['name']} (cached)",
            "",
            "",
            _time(row["median_us"]),
            _time(row["p99_us"]),
            _time(row["floor_median_us"]),
            "",
            f"{row['ratio_to_floor']:.3f}x",
            "",
            "",
            "",
        )
    console.print(table)
    console.print(f"cached rows: {results['cached']['note']}", style="dim", markup=False)

    found = results.get("staleness")
    if found:
        reader = found["reader"]
        table = Table(
            title="Cross-process staleness: a write here, until another process's cache "
            "serves it (requirement: p99 within 100 ms)"
        )
        for column in ("writes", "p50", "p99", "max", "bound", "notices", "reader hits"):
            table.add_column(column, justify="right", style="bold" if column == "p99" else "")
        table.add_row(
            str(found["writes"]),
            *(f"{found[key] * 1e3:.1f} ms" for key in ("p50_s", "p99_s", "max_s")),
            f"{found['max_staleness_s'] * 1e3:.0f} ms",
            str(reader["notices"]),
            f"{reader['hits']:,}",
        )
        console.print(table)

    tp = results["throughput"]
    table = Table(title=f"Throughput of {tp['event']} (ops/s; errors must be 0)")
    for column in ("threads", "pool", "omejdn_pg", "errors", "floor (1 conn/thread)", "errors "):
        table.add_column(column, justify="right")
    for row in tp["rows"]:
        table.add_row(
            str(row["threads"]),
            row["pool"],
            f"{row['ours']['ops_per_s']:,.0f}",
            str(row["ours"]["errors"]),
            f"{row['floor']['ops_per_s']:,.0f}" if row.get("floor") else "",
            str(row["floor"]["errors"]) if row.get("floor") else "",
        )
    console.print(table)

    found = results.get("writers")
    if found:
        table = Table(
            title=f"{found['event']} writers, each its own user (ops/s; errors must be 0)"
        )
        for column in ("writers", "omejdn_pg", "floor (1 conn/writer)", "ratio", "errors"):
            table.add_column(column, justify="right")
        for row in found["rows"]:
            table.add_row(
                str(row["writers"]),
                f"{row['ours_ops_per_s']:,.0f}",
                f"{row['floor_ops_per_s']:,.0f}",
                _ratio(row["ratio"]),
                str(row["errors"]),
            )
        console.print(table)

    table = Table(title="omejdn-pg import (subprocess, --url; wall time incl. start-up)")
    for column in ("users", "seconds", "users/s", "own s", "re-import s", "re-import changes"):
        table.add_column(column, justify="right")
    for row in results["growth"]["import"]:
        if row.get("error"):
            table.add_row(f"{row['users']:,}", "failed", "", "", "", "")
            continue
        table.add_row(
            f"{row['users']:,}",
            f"{row['seconds']:.2f}",
            f"{row['users_per_s']:,.0f}",
            "-" if row["own_seconds"] is None else f"{row['own_seconds']:.2f}",
            f"{row['reimport_seconds']:.2f}",
            "-" if row["reimport_changes"] is None else str(row["reimport_changes"]),
        )
    console.print(table)
    startup = results["import"]["startup_s"]
    if startup is not None:
        console.print(f"CLI start-up alone: {startup:.2f} s", style="dim")

    found = results.get("output_formats")
    if found:
        table = Table(title=f"omejdn-pg users list -o FORMAT, {found['users']:,} users")
        for column in ("format", "median", "min", "users/s", "output", "/ json"):
            table.add_column(column, justify="left" if column == "format" else "right")
        for cells in output_formats.table_rows(found):
            table.add_row(*cells)
        console.print(table)
        console.print(
            f"subprocess, median of {found['runs']} runs, formats taking turns; -o yaml within "
            f"{found['yaml_bound']:g}x -o json: {'yes' if found['yaml_within_2x_json'] else 'NO'}",
            style="dim",
            markup=False,
        )

    found = results.get("plaintext_import")
    if found:
        table = Table(
            title=f"omejdn-pg import, {found['users']:,} plaintext passwords, bcrypt cost "
            f"{found['bcrypt_cost']}"
        )
        for column in ("workers", "s", "own s", "users/s", "re-import s", "own s ", "users/s "):
            table.add_column(column, justify="right")
        for cells in plaintext_import.table_rows(found):
            table.add_row(*cells)
        console.print(table)
        console.print(
            f"subprocess on {found['usable_cores']} usable cores; "
            f"{plaintext_import.speedups(found)}",
            style="dim",
            markup=False,
        )

    table = Table(title="USER_GET_ALL as users grow")
    for column in ("users", "stmts", "omejdn_pg", "floor", "N+1 (Ruby)", "ratio", "N+1 / ours"):
        table.add_column(column, justify="right")
    for row in results["growth"]["get_all"]:
        table.add_row(
            f"{row['users']:,}",
            str(row["statements"]),
            _time(row["ours_s"] * 1e6),
            _time(row["floor_s"] * 1e6),
            _time(row["n_plus_1_s"] * 1e6),
            _ratio(row["ratio_to_floor"]),
            _ratio(row["n_plus_1_over_ours"]),
        )
    console.print(table)

    for name, found in (results.get("profile") or {}).items():
        table = Table(title=f"{name}: what each layer adds (medians, unprofiled, interleaved)")
        table.add_column("layer")
        table.add_column("median", justify="right")
        table.add_column("adds", justify="right", style="bold")
        for row in found.get("layers", ()):
            table.add_row(row["layer"], _time(row["median_us"]), _time(row["adds_us"]))
        console.print(table)
        table = Table(
            title=f"Profile of {name}: {found['calls']:,} calls, "
            f"{found['profiled_us_per_call']:.0f} µs/call under cProfile"
        )
        table.add_column("layer")
        table.add_column("share of time", justify="right")
        for group, share in found["shares"].items():
            table.add_row(group, f"{share:.0%}")
        console.print(table)

    found_bridge = results.get("bridge")
    if found_bridge:
        client = found_bridge["client"]
        table = Table(title=f"omejdn-pg serve: an event through its socket ({client})")
        for column in ("event", "in process p50", "socket p50", "in process p99", "socket p99"):
            table.add_column(column, justify="left" if column == "event" else "right")
        for row in found_bridge["rows"]:
            table.add_row(
                row["case"],
                _time(row["in_process_p50_us"]),
                _time(row["socket_p50_us"]),
                _time(row["in_process_p99_us"]),
                _time(row["socket_p99_us"]),
            )
        console.print(table)
        table = Table(title="Token requests (11 events each) through the socket")
        for column in ("threads", "requests/s", "errors"):
            table.add_column(column, justify="right")
        for row in found_bridge["token_requests"]:
            table.add_row(str(row["threads"]), f"{row['ops_per_s']:,.0f}", str(row["errors"]))
        console.print(table)
