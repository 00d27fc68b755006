"""``python -m bench``: seed, measure every case beside its floor, write JSON and a plot.

The run, in order: start (or reach) the server; seed the main database; time
every case against its floor, interleaved; USER_GET under 1, 4 and 8 threads;
profile USER_GET and CLIENT_GET; time how soon a write here is served by the read
cache of another process; grow a second database for USER_GET_ALL; run
``omejdn-pg import`` at each size; list every user with ``omejdn-pg users list`` in
each output format; import plaintext passwords with 1 and 2 hashing workers; read on
a standby and through PgBouncer; fire
events through ``omejdn-pg serve``'s socket beside the same events in-process,
and token requests through it under 1, 4 and 8 threads. Only then are the tables printed and the
files written, so a run that fails leaves no partial result behind.

``--quick`` is the CI run (500 users, few repeats, imports of a few hundred
users): it proves that every part still works, in well under a minute; its
figures are too few to quote.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from bench import (
    RESULTS_SCHEMA,
    bridge,
    growth,
    hosting,
    importing,
    output_formats,
    plaintext_import,
    plot,
    profiling,
    report,
    seed,
    staleness,
    topologies,
    writers,
)
from bench import server as servers
from bench.cases import Case, Cases, first
from bench.floor import Floor
from bench.placement import Placement, unplaced
from bench.timing import Call, interleave, throughput
from omejdn_pg import Client, Host
from omejdn_pg.host import events
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.settings.backend import PoolSettings
from omejdn_pg.settings.connection import ConnectionSettings

RESULTS: Final = Path(__file__).resolve().parent / "results"
CACHED_ROWS: Final = ("USER_GET", "CLIENT_GET", "KEYS_LOAD", "CONFIGURATION_LOAD", "token request")
log = Console(stderr=True, highlight=False)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="the small CI run (< 1 minute)")
    parser.add_argument("--users", type=int, help="users in the main database (10000; quick 500)")
    parser.add_argument(
        "--repeat", type=int, help="timed calls per side of a point read (2000; quick 150)"
    )
    parser.add_argument(
        "--growth",
        help="user counts of the growth series, comma-separated (1000,10000,100000; quick "
        "200,1000); --users is always added",
    )
    parser.add_argument(
        "--threads", default="1,4,8", help="thread counts for the throughput of USER_GET"
    )
    parser.add_argument("--seconds", type=float, help="seconds per throughput point (3; quick 0.5)")
    parser.add_argument(
        "--profile-calls", type=int, help="calls profiled per point read (5000; quick 300)"
    )
    parser.add_argument(
        "--writes", type=int, help="writes timed for cross-process staleness (200; quick 20)"
    )
    parser.add_argument(
        "--listing-users",
        type=int,
        help="users listed by `omejdn-pg users list` (20000; quick 500)",
    )
    parser.add_argument(
        "--plaintext-users",
        type=int,
        help="plaintext passwords imported per worker count (48; quick 4)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results folder ({RESULTS})")
    args = parser.parse_args(argv)
    quick = args.quick
    args.users = args.users or (500 if quick else 10_000)
    args.repeat = args.repeat or (150 if quick else 2000)
    args.seconds = args.seconds or (0.5 if quick else 3.0)
    args.profile_calls = args.profile_calls or (300 if quick else 5000)
    args.writes = args.writes or (20 if quick else 200)
    args.listing_users = args.listing_users or (500 if quick else 20_000)
    args.listing_runs = 3 if quick else 5
    args.plaintext_users = args.plaintext_users or (4 if quick else 48)
    sizes = args.growth or ("200,1000" if quick else "1000,10000,100000")
    args.growth = sorted({int(n) for n in sizes.split(",") if n.strip()} | {args.users})
    args.threads = [int(n) for n in args.threads.split(",") if n.strip()]
    return args


def run_case(case: Case, repeat: int) -> dict[str, Any]:
    """Time one case, its sides interleaved; the JSON row."""
    calls = max(3, int(repeat * case.share))
    sides: list[Call] = [case.ours, case.floor]
    if case.n_plus_1 is not None:
        sides.append(case.n_plus_1)
    listing = case.group == "listing"
    measured = interleave(
        sides,
        calls=calls,
        blocks=calls if listing else min(20, calls),
        warmup=1 if listing else min(50, max(10, calls // 10)),
    )
    ours, floor = measured[0], measured[1]
    row: dict[str, Any] = {
        "name": case.name,
        "group": case.group,
        "statements": case.statements,
        "round_trips": (
            {"ours": case.round_trips[0], "floor": case.round_trips[1]}
            if case.round_trips is not None
            else None
        ),
        "note": case.note,
        "ours": ours.summary(),
        "floor": floor.summary(),
        "ratio_median": round(ours.median_us / floor.median_us, 3),
        "ratio_p99": round(ours.p99_us / floor.p99_us, 3),
        "n_plus_1": None,
        "n_plus_1_over_ours": None,
        "sql": case.sql,
    }
    if case.n_plus_1 is not None:
        row["n_plus_1"] = measured[2].summary()
        row["n_plus_1_over_ours"] = round(measured[2].median_us / ours.median_us, 2)
    return row


def measure_cached(
    database: ConnectionSettings,
    workdir: Path,
    cases: Cases,
    uncached: dict[str, Case],
    keys: KeySet,
    repeat: int,
) -> dict[str, Any]:
    """The cached point reads beside the uncached floor; null placeholders without a cache."""
    if not hosting.has_cache():
        return {
            "available": False,
            "note": "placeholders: this omejdn_pg has no read cache (issue 10, item 4)",
            "rows": [
                {"name": name, "median_us": None, "p99_us": None, "ratio_to_floor": None}
                for name in CACHED_ROWS
            ],
        }
    host = hosting.open_host(database, workdir, cached=True)
    try:
        assert host.postgres is not None
        readers = Cases(
            host.loader, host.postgres.database.engine, cases.floor, cases.users, keys
        ).readers()
        rows = []
        for name in CACHED_ROWS:
            for _ in range(cases.rotation):  # fill: one pass over every key it rotates over
                readers[name]()
            cached, floor = interleave(
                [readers[name], uncached[name].floor],
                calls=repeat,
                blocks=min(20, repeat),
                warmup=10,
            )
            rows.append(
                {
                    "name": name,
                    **cached.summary(),
                    "floor_median_us": round(floor.median_us, 2),
                    "ratio_to_floor": round(cached.median_us / floor.median_us, 4),
                    "floor_over_cached": round(floor.median_us / cached.median_us, 1),
                }
            )
    finally:
        host.close()
    return {
        "available": True,
        "note": "every group cached (cache: user, client, config, keys true), warmed by one "
        "pass over the rotation; beside the floor of the uncached SQL",
        "rows": rows,
    }


def measure_throughput(
    host: Host,
    sized: Host,
    cases: Cases,
    database: ConnectionSettings,
    threads: Sequence[int],
    seconds: float,
) -> dict[str, Any]:
    """USER_GET under threads: the default pool, a pool as large as the threads, the floor."""
    per_key = cases.user_get_statements()
    names = cases.user_names

    def ours_for(target: Host) -> Any:
        def make(index: int) -> Call:
            cycle = itertools.cycle(names[index:] + names[:index])
            fire = target.loader.fire

            def call() -> None:
                if first(fire(events.USER_GET, username=next(cycle))) is None:
                    raise LookupError("USER_GET found no user")

            return call

        return make

    floors: list[Floor] = []

    def floor_for(index: int) -> Call:
        floor = Floor(database)
        floors.append(floor)
        cycle = itertools.cycle(per_key[index:] + per_key[:index])
        return lambda: floor.execute(next(cycle))

    default = PoolSettings()
    rows: list[dict[str, Any]] = []
    try:
        for count in threads:
            rows.append(
                {
                    "threads": count,
                    "pool": f"default ({default.size}+{default.max_overflow})",
                    "ours": throughput(ours_for(host), count, seconds).summary(),
                    "floor": throughput(floor_for, count, seconds).summary(),
                }
            )
            for floor in floors:
                floor.close()
            floors.clear()
        largest = max(threads)
        rows.append(
            {
                "threads": largest,
                "pool": f"size {largest}",
                "ours": throughput(ours_for(sized), largest, seconds).summary(),
                "floor": None,
            }
        )
    finally:
        for floor in floors:
            floor.close()
    return {"event": "USER_GET", "seconds_per_point": seconds, "rows": rows}


class Phases:
    """Seconds per phase of the run, each announced on stderr as it starts."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def __call__(self, name: str, detail: str = "") -> None:
        self.end()
        now = time.perf_counter()
        self._current = (name, now)
        log.print(f"bench: {now - self.began:6.1f} s  {name} {detail}", markup=False)

    def end(self) -> None:
        if self._current is not None:
            name, started = self._current
            self.seconds[name] = round(time.perf_counter() - started, 2)
            self._current = None


def check_seeded(host: Host, users: int, clients: Sequence[Client]) -> None:
    """The COPY-seeded rows read back through the events as the users and clients they are."""
    for index in (0, users // 2, users - 1):
        user = host.users.find(seed.username(index))
        if user is None or user.attributes != seed.user_attributes(index):
            raise AssertionError(f"seeded user {seed.username(index)} does not read back")
    for expected in (clients[0], clients[1], clients[-1]):
        found = host.clients.find(expected.client_id)
        if found is None or (found.metadata, found.attributes) != (
            expected.metadata,
            expected.attributes,
        ):
            raise AssertionError(f"seeded client {expected.client_id} does not read back")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    phase = Phases()
    started_at = datetime.datetime.now(datetime.UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="omejdn-pg-bench-work-"))
    results: dict[str, Any] = {
        "schema": RESULTS_SCHEMA,
        "kind": "quick" if args.quick else "full",
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "machine": report.machine(),
        "parameters": {
            "users": args.users,
            "clients": seed.CLIENT_COUNT,
            "user_attributes": len(seed.user_attributes(0)),
            "clients_with_jwks": seed.CLIENT_COUNT // seed.JWKS_EVERY,
            "bcrypt_cost": seed.BCRYPT_COST,
            "repeat": args.repeat,
            "threads": args.threads,
            "growth_sizes": args.growth,
            "profile_calls": args.profile_calls,
            "staleness_writes": args.writes,
            "listing_users": args.listing_users,
            "plaintext_users": args.plaintext_users,
        },
    }
    placement = Placement.split()
    with servers.start(placement=placement) as server:
        results["server"] = server.describe()
        if not server.embedded:
            placement = None
            results["placement"] = unplaced(f"${servers.DSN_ENV} names a server not ours to place")
        elif placement is None:
            results["placement"] = unplaced("one core: nothing to split")
        else:
            placement.pin_bench()
            results["placement"] = {
                **placement.describe(),
                "backend_cores": server.backend_cores(),
            }
        phase("seed users", f"{args.users:,} by COPY")
        hashes = seed.PasswordHashes.make()
        database = server.database("main")
        users_s = seed.seed_users(database, 0, args.users, hashes)
        host = hosting.open_host(database, workdir)
        sized = hosting.open_host(database, workdir, pool_size=max(args.threads))
        try:
            assert host.postgres is not None
            phase("seed the rest", f"{seed.CLIENT_COUNT:,} clients by COPY, keys and config")
            clients = seed.clients()
            clients_s = seed.seed_clients(database, clients)
            keys = seed.signing_keys()
            batch_s = seed.seed_host(host, clients, keys)
            check_seeded(host, args.users, clients)
            jwks_count = sum(1 for c in clients if "jwks" in c.metadata)
            results["seeding"] = {
                "users": "COPY into users and attributes (bulk SQL), one transaction",
                "users_s": round(users_s, 3),
                "clients": "COPY into clients and attributes (bulk SQL), one transaction",
                "clients_s": round(clients_s, 3),
                "rest": f"host.batch(): KEYS_STORE x{jwks_count + 2} (client JWKS, signing sets), "
                f"CONFIGURATION_STORE x{len(seed.SECTIONS)}, through loader.fire, one transaction",
                "rest_s": round(batch_s, 3),
            }
            floor = Floor(database)
            try:
                phase("capture the SQL", "warm every case, record what it sends")
                cases = Cases(host.loader, host.postgres.database.engine, floor, args.users, keys)
                rows = []
                for case in cases.all():
                    phase(case.name)
                    rows.append((run_case(case, args.repeat), case))
                results["latency"] = [row for row, _ in rows]
                phase("cached reads")
                results["cached"] = measure_cached(
                    database, workdir, cases, {c.name: c for _, c in rows}, keys, args.repeat
                )
                phase("throughput", f"threads {args.threads}")
                results["throughput"] = measure_throughput(
                    host, sized, cases, database, args.threads, args.seconds
                )
                phase("writers", f"USER_UPDATE, writers {list(writers.COUNTS)}, each its own user")
                results["writers"] = writers.measure(
                    database, workdir, cases.user_names, args.seconds
                )
                phase("profile", f"{args.profile_calls:,} calls each, and the layers")
                database_handle = host.postgres.database
                results["profile"] = {}
                for name, rotating, fixed in (
                    (
                        "USER_GET",
                        cases.user_get().ours,
                        lambda: cases.fire_user_get(cases.user_names[1]),
                    ),
                    (
                        "CLIENT_GET",
                        cases.client_get().ours,
                        lambda: cases.fire_client_get(cases.client_ids[1]),
                    ),
                ):
                    found = profiling.profile(rotating, args.profile_calls)
                    found["layers"] = profiling.layers(database_handle, fixed, floor, args.repeat)
                    results["profile"][name] = found
                phase("staleness", f"{args.writes} writes seen by another process's cache")
                results["staleness"] = (
                    staleness.measure(database, args.writes, workdir)
                    if hosting.has_cache()
                    else None
                )
            finally:
                floor.close()
        finally:
            sized.close()
            host.close()
            server.drop(database)
        phase("USER_GET_ALL growth", str(args.growth))
        listing = growth.get_all_series(server, args.growth, hashes, workdir, args.repeat)
        phase("import growth", str(args.growth))
        # The command is a subprocess that loads the package afresh: a failure
        # is recorded (and fails the run) without losing everything measured.
        imports = []
        for size in args.growth:
            try:
                imports.append(importing.measure(server, size, hashes, workdir))
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                imports.append(importing.failed(size, error))
        main_import = next(row for row in imports if row["users"] == args.users)
        try:
            startup: float | None = round(importing.startup_seconds(), 3)
        except (RuntimeError, OSError, subprocess.SubprocessError):
            startup = None
        results["import"] = {**main_import, "startup_s": startup}
        results["growth"] = {"get_all": listing, "import": imports}
        phase("output formats", f"users list -o json|yaml|table, {args.listing_users:,} users")
        results["output_formats"] = output_formats.measure(
            server, args.listing_users, hashes, args.listing_runs
        )
        phase("plaintext import", f"{args.plaintext_users} users, hashing workers 1 and 2")
        results["plaintext_import"] = plaintext_import.measure(
            server, args.plaintext_users, workdir, placement
        )
        phase("topologies", "USER_GET on a standby and through PgBouncer")
        results["topologies"] = topologies.measure(quick=args.quick, placement=placement)
        for label, row in results["topologies"]["rows"].items():
            log.print(
                f"bench: USER_GET {label}: {row['p50_us']} µs p50, {row['ratio']}x the primary",
                markup=False,
            )
        for label, reason in results["topologies"]["skipped"].items():
            log.print(f"bench: no {label} row: {reason}", markup=False)
        phase("bridge", "events through omejdn-pg serve's socket beside in-process")
        results["bridge"] = bridge.measure(
            server,
            calls=args.repeat,
            seconds=args.seconds,
            threads=args.threads,
        )
    phase.end()
    results["phases"] = phase.seconds
    results["seconds"] = round(time.perf_counter() - phase.began, 1)
    report.print_tables(results)
    path = report.write(results, args.out, stamp, args.quick)
    picture = plot.draw(results, args.out, stamp, args.quick)
    log.print(f"bench: wrote {path} and {picture} in {results['seconds']} s", markup=False)
    errors = sum(
        row["ours"]["errors"] + (row["floor"]["errors"] if row["floor"] else 0)
        for row in results["throughput"]["rows"]
    ) + sum(row["errors"] for row in results["bridge"]["token_requests"])
    failed = [row for row in imports if row.get("error")]
    if errors:
        log.print(f"bench: {errors} errors under threads", style="red", markup=False)
    for row in failed:
        log.print(f"bench: import of {row['users']:,} failed: {row['error']}", style="red")
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
