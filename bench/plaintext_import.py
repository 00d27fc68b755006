"""``omejdn-pg import`` of plaintext passwords with 1 and 2 hashing workers.

An import hashes each plaintext password of ``users.yml`` under the password
policy, on a pool of ``OMEJDN_PG_HASH_WORKERS`` threads
(``omejdn_pg/service/transfer/hashing.py``); an unchanged re-import verifies
each plaintext against the stored hash instead, on the same pool. bcrypt
releases the GIL, so two workers should take about half the time of one where
two cores are free: this row measures whether they do (``speedup``, 1 worker's
seconds over 2 workers'), beside the cores the machine lets this run use.

Each worker count imports N users into a fresh database, then re-imports the
same directory (nothing may change), through :func:`bench.importing.import_once`
(a subprocess, ``--url``, wall time). The policy's cost comes from a plugin file
given with ``--config`` (``passwords: {bcrypt_rounds: COST}``; the connection is
still ``--url``'s): at cost 10 a hash takes about 70 ms on one core here, so
hashing is most of the command and N stays small enough for the row to cost
about 15 s in a full run.

Where it runs: the bench pins itself to its first core (:mod:`bench.placement`)
and a child inherits that, which would leave the second worker no core of its
own. The import runs on every core this run may use, the servers' included:
that is what an operator's import gets, and while it hashes — nearly all of its
time — the server is idle (its writes come after the plan). Keeping it off the
server's cores would leave one core on a two-core machine and measure nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import psycopg

from bench import importing, seed
from bench.placement import Placement, all_cores
from bench.server import Server
from omejdn_pg.settings.connection import ConnectionSettings

WORKERS: Final = (1, 2)
BCRYPT_COST: Final = 10
WORKERS_ENV: Final = "OMEJDN_PG_HASH_WORKERS"


class Plaintext:
    """The bench's passwords as an operator's ``users.yml`` may hold them: in the clear."""

    def of(self, index: int) -> str:
        return seed.password(index)


def plugin_file(directory: Path, cost: int) -> Path:
    """A plugin file that sets only the password policy's bcrypt cost."""
    path = directory / f"plugins-bcrypt-{cost}.yml"
    path.write_text(
        "plugins:\n"
        "  postgres_backend:\n"
        "    passwords:\n"
        "      scheme: bcrypt\n"
        f"      bcrypt_rounds: {cost}\n",
        encoding="utf-8",
    )
    return path


def stored_costs(settings: ConnectionSettings) -> set[int]:
    """The bcrypt costs of the stored password hashes (``$2b$10$...`` is 10)."""
    with psycopg.connect(settings.conninfo()) as conn:
        rows = conn.execute("SELECT DISTINCT substr(password, 5, 2) FROM users").fetchall()
    return {int(row[0]) for row in rows}


def measure(
    server: Server, count: int, workdir: Path, placement: Placement | None
) -> dict[str, Any]:
    """Import ``count`` plaintext users, then again unchanged, with each worker count."""
    directory = importing.write_deployment(workdir / f"plaintext-{count}", count, Plaintext())
    options = ["--config", str(plugin_file(workdir, BCRYPT_COST))]
    cores = all_cores(placement)
    rows = []
    for workers in WORKERS:
        database = server.database(f"plaintext_{workers}")
        env = {WORKERS_ENV: str(workers)}
        try:
            first = importing.import_once(database, directory, options, env, cores)
            again = importing.import_once(database, directory, options, env, cores)
            stored = importing.count_users(database)
            costs = stored_costs(database)
        finally:
            server.drop(database)
        if stored != count or costs != {BCRYPT_COST}:
            raise RuntimeError(
                f"plaintext import with {workers} workers stored {stored} of {count} users, "
                f"bcrypt costs {sorted(costs)} (expected {BCRYPT_COST})"
            )
        if first["changes"] != count or again["changes"] != 0:
            raise RuntimeError(
                f"plaintext import with {workers} workers changed {first['changes']}, "
                f"its re-import {again['changes']} (expected {count} and 0)"
            )
        rows.append(
            {
                "workers": workers,
                "seconds": first["seconds"],
                "users_per_s": round(count / first["seconds"], 1),
                "own_seconds": first["own_seconds"],
                "changes": first["changes"],
                "reimport_seconds": again["seconds"],
                "reimport_users_per_s": round(count / again["seconds"], 1),
                "reimport_own_seconds": again["own_seconds"],
                "reimport_changes": again["changes"],
            }
        )
    one, two = rows[0], rows[1]
    return {
        "users": count,
        "bcrypt_cost": BCRYPT_COST,
        "usable_cores": len(cores) or None,
        "import_cores": sorted(cores) or None,
        "rows": rows,
        "speedup": round(one["seconds"] / two["seconds"], 2),
        "reimport_speedup": round(one["reimport_seconds"] / two["reimport_seconds"], 2),
        "own_speedup": _ratio(one["own_seconds"], two["own_seconds"]),
        "reimport_own_speedup": _ratio(one["reimport_own_seconds"], two["reimport_own_seconds"]),
    }


def _ratio(slow: float | None, fast: float | None) -> float | None:
    return round(slow / fast, 2) if slow and fast else None


def _rate(users: int, seconds: float) -> str:
    rate = users / seconds
    return f"{rate:,.1f}" if rate < 100 else f"{rate:,.0f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_rows(found: dict[str, Any]) -> list[list[str]]:
    """The printed table's rows: workers; import s, own s, users/s; the same re-imported."""
    users = found["users"]
    return [
        [
            str(row["workers"]),
            _seconds(row["seconds"]),
            _seconds(row["own_seconds"]),
            _rate(users, row["seconds"]),
            _seconds(row["reimport_seconds"]),
            _seconds(row["reimport_own_seconds"]),
            _rate(users, row["reimport_seconds"]),
        ]
        for row in found["rows"]
    ]


def speedups(found: dict[str, Any], separator: str = ", ") -> str:
    """2 workers over 1, whole command and the command's own seconds (no start-up)."""
    own = found.get("own_speedup")
    own_again = found.get("reimport_own_speedup")
    return (
        f"2 workers over 1: import {found['speedup']:.2f}x"
        + (f" (own {own:.2f}x)" if own else "")
        + f"{separator}re-import {found['reimport_speedup']:.2f}x"
        + (f" (own {own_again:.2f}x)" if own_again else "")
    )


def draw(axes: Any, found: dict[str, Any]) -> None:
    """Import and re-import seconds per worker count, the speed-ups in the title."""
    bars = [
        (f"{row['workers']} worker{'s' * (row['workers'] > 1)}: {what}", row[key], row[own])
        for row in found["rows"]
        for what, key, own in (
            ("import", "seconds", "own_seconds"),
            ("re-import", "reimport_seconds", "reimport_own_seconds"),
        )
    ]
    positions = list(range(len(bars)))[::-1]
    colours = ["tab:purple" if ": import" in label else "tab:cyan" for label, _, _ in bars]
    axes.barh(positions, [value for _, value, _ in bars], color=colours)
    for position, (_, value, own) in zip(positions, bars, strict=True):
        axes.annotate(
            f"{value:.2f} s · {_rate(found['users'], value)} users/s"
            + (f" · own {own:.2f} s" if own is not None else ""),
            (value, position),
            xytext=(4, -3),
            textcoords="offset points",
            fontsize=8,
        )
    axes.set_xlim(0, max(value for _, value, _ in bars) * 1.9)
    axes.set_yticks(positions, [label for label, _, _ in bars])
    axes.set_xlabel("seconds, whole command (own: its report, no start-up)")
    heading = (
        f"(e) omejdn-pg import, {found['users']:,} plaintext passwords, bcrypt "
        f"{found['bcrypt_cost']}, {found['usable_cores']} cores"
    )
    axes.set_title("\n".join([heading, speedups(found, "\n")]), fontsize=10)
