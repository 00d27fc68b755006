"""The figure: (a) each case's latency as a ratio to its floor, (b) growth with N,
(c) events through the socket, (d) the listing's output formats, (e) a plaintext
import with 1 and 2 hashing workers.

Drawn with matplotlib's Agg backend (no display needed), from the results
document alone, so a committed JSON can be re-plotted. Panel (a) marks the
floor (1x) and the issue's target for point reads (1.3x); panel (b) is
log-log, where linear growth is a line of slope one. (d) and (e) are in
seconds of a whole command, below (b) and (c); a document written before they
were measured leaves them empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench import output_formats, plaintext_import

TARGET_RATIO = 1.3


def draw(results: dict[str, Any], out: Path, stamp: str, quick: bool) -> Path:
    """``<out>/<stamp>[-quick].png`` and ``latest[-quick].png``; the first path."""
    figure, panels = plt.subplot_mosaic(
        [["a", "b", "c"], ["a", "d", "e"]],
        figsize=(20, 11),
        layout="constrained",
        width_ratios=(3, 2, 2),
        height_ratios=(3, 2),
    )
    ratios, growth, bridge = panels["a"], panels["b"], panels["c"]
    cached = [
        {**row, "group": "cached", "ratio_median": row["ratio_to_floor"], "ratio_p99": None}
        for row in results["cached"]["rows"]
        if row["ratio_to_floor"] is not None
    ]
    _ratios(ratios, results["latency"] + [{**r, "name": f"{r['name']} (cached)"} for r in cached])
    _growth(growth, results["growth"])
    _bridge(bridge, results["bridge"])
    for key, found, draw_panel in (
        ("d", results.get("output_formats"), output_formats.draw),
        ("e", results.get("plaintext_import"), plaintext_import.draw),
    ):
        if found:
            draw_panel(panels[key], found)
        else:
            panels[key].set_axis_off()
    parameters, server, machine = results["parameters"], results["server"], results["machine"]
    title = (
        f"omejdn_pg bench {results['started_at'][:10]} · {parameters['users']:,} users · "
        f"PostgreSQL {server['server_version']} ({server['transport']}) · "
        f"{machine['cpu']}, {machine['cores']} cores · commit {machine['commit']}"
    )
    # A delay, not a ratio to a floor: it has no bar of its own, so it goes in the title.
    found = results.get("staleness")
    if found:
        title += (
            f"\na write seen by another process's cache: p50 {found['p50_s'] * 1e3:.1f} ms, "
            f"p99 {found['p99_s'] * 1e3:.1f} ms, max {found['max_s'] * 1e3:.1f} ms "
            f"over {found['writes']} writes (bound {found['max_staleness_s'] * 1e3:.0f} ms)"
        )
    figure.suptitle(title, fontsize=10)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    path = out / f"{stamp}{suffix}.png"
    figure.savefig(path, dpi=110)
    figure.savefig(out / f"latest{suffix}.png", dpi=110)
    plt.close(figure)
    return path


def _ratios(axes: Any, rows: list[dict[str, Any]]) -> None:
    names = [row["name"] for row in rows]
    medians = [row["ratio_median"] for row in rows]
    p99s = [row["ratio_p99"] for row in rows]
    colours = {
        "point read": "tab:blue",
        "composite": "tab:purple",
        "write": "tab:orange",
        "cached": "tab:olive",
    }
    positions = list(range(len(rows)))[::-1]
    axes.barh(
        positions,
        medians,
        color=[colours.get(row["group"], "tab:green") for row in rows],
        label="median",
    )
    # A p99 far out (one stall on a shared machine) would squash every bar: clip it at
    # the edge and write its value there.
    edge = max(2.0, max(medians) * 1.8)
    marked = [(pos, p99) for pos, p99 in zip(positions, p99s, strict=True) if p99 is not None]
    axes.scatter(
        [min(p99, edge) for _, p99 in marked],
        [pos for pos, _ in marked],
        marker="|",
        s=200,
        color="black",
        label="p99",
        zorder=3,
    )
    for position, p99 in marked:
        if p99 > edge:
            axes.annotate(
                f"p99 {p99:.1f}x ->",
                (edge, position),
                xytext=(-4, 6),
                textcoords="offset points",
                ha="right",
                fontsize=7,
            )
    for position, median, row in zip(positions, medians, rows, strict=True):
        axes.annotate(
            f"{median:.3f}x: {1 / median:.0f}x faster than the floor"
            if row["group"] == "cached"
            else f"{median:.2f}x",
            (median, position),
            xytext=(4, -4),
            textcoords="offset points",
            fontsize=8,
        )
    axes.axvline(1.0, color="grey", linewidth=1)
    axes.axvline(TARGET_RATIO, color="red", linestyle="--", linewidth=1, label="point-read target")
    axes.set_xlim(0, edge * 1.05)
    axes.set_yticks(positions, names)
    axes.set_xlabel("latency / floor (raw psycopg, same SQL, prepared); cached: / uncached floor")
    axes.set_title("(a) latency ratio to the floor, per event", fontsize=10)
    axes.legend(loc="lower right", fontsize=8)


def _growth(axes: Any, growth: dict[str, Any]) -> None:
    listing = growth["get_all"]
    imports = growth["import"]
    users = [row["users"] for row in listing]
    axes.plot(users, [r["ours_s"] for r in listing], "o-", label="USER_GET_ALL omejdn_pg")
    axes.plot(users, [r["floor_s"] for r in listing], "o--", label="USER_GET_ALL floor")
    axes.plot(users, [r["n_plus_1_s"] for r in listing], "o:", label="USER_GET_ALL Ruby N+1")
    done = [row for row in imports if row["seconds"] is not None]
    sizes = [row["users"] for row in done]
    axes.plot(sizes, [r["seconds"] for r in done], "s-", label="import (wall)")
    axes.plot(sizes, [r["reimport_seconds"] for r in done], "s--", label="re-import, no change")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("users")
    axes.set_ylabel("seconds")
    axes.set_title("(b) growth with the number of users", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)


def _bridge(axes: Any, found: dict[str, Any]) -> None:
    """Each event through ``omejdn-pg serve``'s socket beside in-process; token requests/s
    per thread count in the title (a rate has no place on a latency axis)."""
    rows = found["rows"]
    positions = list(range(len(rows)))[::-1]
    height = 0.4
    axes.barh(
        [p + height / 2 for p in positions],
        [row["in_process_p50_us"] for row in rows],
        height,
        color="tab:blue",
        label="in process p50",
    )
    axes.barh(
        [p - height / 2 for p in positions],
        [row["socket_p50_us"] for row in rows],
        height,
        color="tab:red",
        label="through the socket p50",
    )
    for position, row in zip(positions, rows, strict=True):
        axes.annotate(
            f"{row['socket_p50_us']:.0f} µs",
            (row["socket_p50_us"], position - height / 2),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=8,
        )
    axes.set_xscale("log")
    axes.set_yticks(positions, [row["case"] for row in rows])
    axes.set_xlabel("µs per call (log)")
    rates = ", ".join(
        f"{row['threads']}: {row['ops_per_s']:,.0f}" for row in found["token_requests"]
    )
    axes.set_title(
        f"(c) an event through omejdn-pg serve's socket\ntoken requests/s by threads: {rates}",
        fontsize=10,
    )
    axes.legend(loc="upper left", fontsize=8)
