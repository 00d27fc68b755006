"""``python -m bench.upstream suite|tokens``: upstream Omejdn on omejdn_pg (see the package doc).

``suite`` runs each of upstream's test files (as its ``scripts/test_all.sh``
does, but on to the end instead of stopping at the first failing file) and
prints the counts per file and in total. ``tokens`` measures the token
endpoint on each storage at each concurrency. Both skip with their reason when
a checkout or Ruby is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.upstream import load
from bench.upstream.omejdn import (
    HERE,
    Checkouts,
    copy_checkout,
    free_port,
    ruby_env,
    seed,
    service,
    thin,
    use_omejdn_pg,
)

COUNTS = re.compile(
    r"(\d+) tests, (\d+) assertions, (\d+) failures, (\d+) errors, (\d+) pendings, (\d+) omissions"
)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("command", choices=("suite", "tokens"))
    parser.add_argument("--omejdn", type=Path, default=os.environ.get("OMEJDN_SERVER_DIR"))
    parser.add_argument("--jwt", type=Path, default=os.environ.get("RUBY_JWT_DIR"))
    parser.add_argument(
        "--storage",
        default="omejdn_pg",
        help="suite: file or omejdn_pg; tokens: comma-separated (file,omejdn_pg)",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="tokens: seconds per cell")
    parser.add_argument("--concurrency", default="1,4,8", help="tokens: client counts")
    parser.add_argument("--work", type=Path, help="scratch folder (a temporary one by default)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    return parser.parse_args(argv)


def run_suite(checkouts: Checkouts, storage: str, work: Path) -> dict[str, Any]:
    """Every upstream test file on ``storage``; counts per file and the total."""
    run_dir = copy_checkout(checkouts, work / "omejdn")
    env = ruby_env(checkouts)
    socket_path = work / "omejdn-pg.sock"
    files = sorted((run_dir / "tests").glob("test_*.rb")) + sorted(
        (run_dir / "tests" / "plugins").glob("test*.rb")
    )
    results: dict[str, Any] = {"storage": storage, "files": {}}
    with service(socket_path, work / "service.log") if storage == "omejdn_pg" else _nothing():
        if storage == "omejdn_pg":
            env["OMEJDN_PG_TEST_PLUGINS"] = str(use_omejdn_pg(run_dir, socket_path))
            (run_dir / "tests" / "config_testsetup.rb").write_text(
                (HERE / "testsetup.rb").read_text()
            )
        for file in files:
            name = str(file.relative_to(run_dir))
            done = subprocess.run(
                ["ruby", name], cwd=run_dir, env=env, capture_output=True, text=True, check=False
            )
            (work / f"{file.stem}.log").write_text(done.stdout + done.stderr)
            found = COUNTS.search(done.stdout)
            if found is None:
                counts = {"tests": 0, "passed": 0, "crashed": done.stderr[-2000:]}
            else:
                tests, assertions, failures, errors, pendings, omissions = map(int, found.groups())
                counts = {
                    "tests": tests,
                    "assertions": assertions,
                    "failures": failures,
                    "errors": errors,
                    "passed": tests - failures - errors - pendings - omissions,
                }
            results["files"][name] = counts
            print(f"{name}: {counts.get('passed')}/{counts.get('tests')} {counts}", flush=True)
    results["passed"] = sum(c["passed"] for c in results["files"].values())
    results["tests"] = sum(c["tests"] for c in results["files"].values())
    print(f"total: {results['passed']}/{results['tests']} on {storage} (logs in {work})")
    return results


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


def run_tokens(
    checkouts: Checkouts, storage: str, work: Path, seconds: float, concurrency: list[int]
) -> dict[str, Any]:
    """Token requests/s of a live Omejdn on ``storage`` at each concurrency."""
    run_dir = copy_checkout(checkouts, work / f"omejdn-{storage}")
    port = free_port()
    socket_path = work / "omejdn-pg.sock"
    issuer = f"http://localhost:{port}"
    rows: list[dict[str, Any]] = []
    with service(socket_path, work / "service.log") if storage == "omejdn_pg" else _nothing():
        plugins = use_omejdn_pg(run_dir, socket_path) if storage == "omejdn_pg" else None
        assertions = seed(
            run_dir,
            checkouts,
            issuer=issuer,
            count=256,
            keyfile=work / "bench_client.pem",
            plugins=plugins,
            private_client_key=storage == "file",
        )
        with thin(run_dir, checkouts, port, plugins, work / f"omejdn-{storage}.log"):
            first = load.one(port, load.request_bytes(port, assertions[0]))
            if first != 200:
                raise RuntimeError(f"the first token request on {storage} answered {first}")
            load.hammer(port, assertions, 2, 2.0)  # warm-up
            for c in concurrency:
                result = load.hammer(port, assertions, c, seconds)
                row = {
                    "storage": storage,
                    "concurrency": c,
                    "seconds": round(result.seconds, 2),
                    "ok": result.ok,
                    "statuses": result.statuses,
                    "per_second": round(result.per_second, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return {"storage": storage, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.omejdn is None or args.jwt is None:
        print("skipped: give --omejdn and --jwt (or $OMEJDN_SERVER_DIR and $RUBY_JWT_DIR)")
        return 0
    checkouts = Checkouts(args.omejdn.resolve(), args.jwt.resolve())
    if (why := checkouts.missing()) is not None:
        print(f"skipped: {why}")
        return 0
    with tempfile.TemporaryDirectory(prefix="omejdn-upstream-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        output: Any
        if args.command == "suite":
            output = run_suite(checkouts, args.storage, work)
        else:
            concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
            output = []
            for storage in args.storage.split(","):
                sub = work / storage
                sub.mkdir(exist_ok=True)
                output.append(run_tokens(checkouts, storage, sub, args.seconds, concurrency))
        if args.json:
            args.json.write_text(json.dumps(output, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
