"""``python -m bench.upstream suite|tokens``: upstream Omejdn on omejdn_pg (see the package doc).

``suite`` runs each of upstream's test files (as its ``scripts/test_all.sh``
does, but on to the end instead of stopping at the first failing file) and
prints the counts per file and in total. ``tokens`` measures the token
endpoint on each storage at each concurrency. Both skip with their reason when
a checkout or Ruby is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.upstream import load
from bench.upstream.fixtures import renew_certificates
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
    parser.add_argument("command", choices=("suite", "tokens", "events", "live"))
    parser.add_argument("--omejdn", type=Path, default=os.environ.get("OMEJDN_SERVER_DIR"))
    parser.add_argument("--jwt", type=Path, default=os.environ.get("RUBY_JWT_DIR"))
    parser.add_argument(
        "--storage",
        default="omejdn_pg",
        help="suite: omejdn_pg, files (Omejdn's default stores, seeded as for omejdn_pg) or "
        "memory (upstream's own set-up: an in-memory store for config and keys); "
        "tokens: comma-separated, of file and omejdn_pg",
    )
    parser.add_argument(
        "--seconds", type=float, default=20.0, help="tokens, events: seconds per cell"
    )
    parser.add_argument(
        "--concurrency", default="1,4,8", help="tokens: clients; events: Ruby threads"
    )
    parser.add_argument(
        "--adapt",
        action="store_true",
        help="suite: renew the expired test certificates and list the fixtures in key order",
    )
    parser.add_argument("--rounds", type=int, default=2, help="tokens: rounds over all cells")
    parser.add_argument("--work", type=Path, help="scratch folder (a temporary one by default)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    return parser.parse_args(argv)


def run_suite(checkouts: Checkouts, storage: str, work: Path, adapt: bool) -> dict[str, Any]:
    """Every upstream test file on ``storage``; counts per file and the total."""
    run_dir = copy_checkout(checkouts, work / "omejdn")
    env = ruby_env(checkouts)
    results: dict[str, Any] = {"storage": storage, "adapted": adapt, "files": {}}
    if adapt:
        results["renewed_certificates"] = renew_certificates(run_dir)
        env["OMEJDN_PG_TEST_KEY_ORDER"] = "1"
    socket_path = work / "omejdn-pg.sock"
    files = sorted((run_dir / "tests").glob("test_*.rb")) + sorted(
        (run_dir / "tests" / "plugins").glob("test*.rb")
    )
    with service(socket_path, work / "service.log") if storage == "omejdn_pg" else _nothing():
        if storage == "omejdn_pg":
            env["OMEJDN_PG_TEST_PLUGINS"] = str(use_omejdn_pg(run_dir, socket_path))
        elif storage == "files":
            # Omejdn's own default stores (YAML and PEM files), seeded the same way.
            (run_dir / "no_plugins.yml").write_text("{}\n")
            env["OMEJDN_PG_TEST_PLUGINS"] = str(run_dir / "no_plugins.yml")
        if storage != "memory":
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
    how = " (adapted: renewed certificates, fixtures in key order)" if adapt else ""
    print(f"total: {results['passed']}/{results['tests']} on {storage}{how} (logs in {work})")
    return results


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


@contextlib.contextmanager
def live_server(
    checkouts: Checkouts, storage: str, work: Path
) -> Iterator[tuple[int, list[str], int]]:
    """A seeded Omejdn on ``storage``, listening: its port, pre-signed assertions, its pid."""
    work.mkdir(parents=True, exist_ok=True)
    run_dir = copy_checkout(checkouts, work / "omejdn")
    port = free_port()
    socket_path = work / "omejdn-pg.sock"
    with service(socket_path, work / "service.log") if storage == "omejdn_pg" else _nothing():
        plugins = use_omejdn_pg(run_dir, socket_path) if storage == "omejdn_pg" else None
        assertions = seed(
            run_dir,
            checkouts,
            issuer=f"http://localhost:{port}",
            count=256,
            keyfile=work / "bench_client.pem",
            plugins=plugins,
            private_client_key=storage == "file",
        )
        with thin(run_dir, checkouts, port, plugins, work / "omejdn.log") as server:
            first = load.one(port, load.request_bytes(port, assertions[0]))
            if first != 200:
                raise RuntimeError(f"the first token request on {storage} answered {first}")
            load.hammer(port, assertions, 2, 2.0)  # warm-up
            yield port, assertions, server.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_tokens(
    checkouts: Checkouts,
    storages: list[str],
    work: Path,
    seconds: float,
    concurrency: list[int],
    rounds: int,
) -> list[dict[str, Any]]:
    """Token requests/s of live Omejdns, one per storage, all up at once and measured in
    turn (storage after storage within each concurrency, ``rounds`` times), so that the
    load of a shared machine drifts over all of them alike."""
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {s: stack.enter_context(live_server(checkouts, s, work / s)) for s in storages}
        for round_ in range(rounds):
            for c in concurrency:
                for storage, (port, assertions, pid) in servers.items():
                    cpu = cpu_seconds(pid)
                    result = load.hammer(port, assertions, c, seconds)
                    cpu = cpu_seconds(pid) - cpu
                    row = {
                        "storage": storage,
                        "round": round_,
                        "concurrency": c,
                        "seconds": round(result.seconds, 2),
                        "ok": result.ok,
                        "statuses": result.statuses,
                        "per_second": round(result.per_second, 1),
                        # Omejdn's Ruby process: CPU per answered request, and the rate
                        # one free core would give at that cost
                        "ruby_cpu_ms_per_request": round(1000 * cpu / max(result.ok, 1), 2),
                        "one_core_per_second": round(result.ok / cpu, 1) if cpu else None,
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    for c in concurrency:
        best = {
            s: max(r["per_second"] for r in rows if r["storage"] == s and r["concurrency"] == c)
            for s in storages
        }
        print(
            f"concurrency {c}: best of {rounds} " + ", ".join(f"{s} {v}/s" for s, v in best.items())
        )
    return rows


def issue(port: int, assertion: str) -> tuple[int, str]:
    """One token request: its status and the access token (or the body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(load.request_bytes(port, assertion))
        data = b"".join(iter(lambda: s.recv(65536), b""))
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        return status, body.decode(errors="replace")
    return status, str(json.loads(body)["access_token"])


def fetch(port: int, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        data = b"".join(iter(lambda: s.recv(65536), b""))
    return data.partition(b"\r\n\r\n")[2]


def verify(checkouts: Checkouts, work: Path, token: str, port: int) -> dict[str, Any]:
    """The token checked by ruby-jwt against the server's /jwks.json; its header facts."""
    (work / "token").write_text(token)
    (work / "jwks.json").write_bytes(fetch(port, "/jwks.json"))
    done = subprocess.run(
        ["ruby", str(HERE / "verify.rb"), str(work / "token"), str(work / "jwks.json")],
        env=ruby_env(checkouts),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the token does not verify against /jwks.json: {done.stderr}")
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def omejdn_pg_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "omejdn_pg", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"omejdn-pg {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


def run_live(checkouts: Checkouts, work: Path) -> dict[str, Any]:
    """A live Omejdn on omejdn_pg: a client_credentials token (private_key_jwt) that
    verifies against /jwks.json; then a key rotation made outside Omejdn
    (``keys rotate`` + ``keys maintain``) reaching its signing without a restart."""
    run_dir = copy_checkout(checkouts, work / "omejdn")
    port = free_port()
    socket_path = work / "omejdn-pg.sock"
    with service(socket_path, work / "service.log"):
        plugins = use_omejdn_pg(run_dir, socket_path)
        assertions = seed(
            run_dir,
            checkouts,
            issuer=f"http://localhost:{port}",
            count=4,
            keyfile=work / "bench_client.pem",
            plugins=plugins,
            private_client_key=False,
        )
        with thin(run_dir, checkouts, port, plugins, work / "omejdn.log"):
            status, token = issue(port, assertions[0])
            if status != 200:
                raise RuntimeError(f"token request answered {status}: {token}")
            before = verify(checkouts, work, token, port)
            print(f"token signed by {before['kid']} ({before['alg']}) verifies against /jwks.json")
            print(omejdn_pg_cli("keys", "rotate", "omejdn", "omejdn", "--publish-for", "0s"))
            print(omejdn_pg_cli("keys", "maintain") or "(maintain said nothing)")
            rotated = time.monotonic()
            after = before
            while after["kid"] == before["kid"] and time.monotonic() - rotated < 30:
                status, token = issue(port, assertions[1])
                if status != 200:
                    raise RuntimeError(f"token request answered {status}: {token}")
                after = verify(checkouts, work, token, port)
            took = time.monotonic() - rotated
            if after["kid"] == before["kid"]:
                raise RuntimeError("the running server still signs with the old key after 30 s")
            print(f"after rotation: signed by {after['kid']} within {took:.2f} s, no restart")
    return {"before": before, "after": after, "switch_seconds": round(took, 2)}


def run_events(
    checkouts: Checkouts, storage: str, work: Path, seconds: float, threads: list[int]
) -> dict[str, Any]:
    """Each event of a token request as the core fires it, timed from Ruby, on ``storage``."""
    run_dir = copy_checkout(checkouts, work / f"omejdn-{storage}")
    socket_path = work / "omejdn-pg.sock"
    rows: list[dict[str, Any]] = []
    with service(socket_path, work / "service.log") if storage == "omejdn_pg" else _nothing():
        plugins = use_omejdn_pg(run_dir, socket_path) if storage == "omejdn_pg" else None
        seed(
            run_dir,
            checkouts,
            issuer="http://localhost:4567",
            count=1,
            keyfile=work / "bench_client.pem",
            plugins=plugins,
            private_client_key=storage == "file",
        )
        env = ruby_env(checkouts)
        if plugins is not None:
            env["OMEJDN_PLUGINS"] = str(plugins)
        done = subprocess.run(
            ["ruby", str(HERE / "events.rb"), str(seconds), ",".join(map(str, threads))],
            cwd=run_dir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"events.rb failed:\n{done.stdout}\n{done.stderr}")
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                row = {"storage": storage, **json.loads(line)}
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
        with database(work):
            return run(args, checkouts, work)


@contextlib.contextmanager
def database(work: Path) -> Iterator[None]:
    """The database the service uses: the configured one, else an embedded one of the run's
    own (``work/pgdata``), stopped at the end, so each run starts from empty storage."""
    if any(os.environ.get(name) for name in ("OMEJDN_PG_URL", "OMEJDN_PLUGINS")):
        yield
        return
    os.environ["OMEJDN_PG_DATA"] = str(work / "pgdata")
    try:
        yield
    finally:
        subprocess.run(
            [sys.executable, "-m", "omejdn_pg", "db", "stop"], capture_output=True, check=False
        )


def run(args: argparse.Namespace, checkouts: Checkouts, work: Path) -> int:
    """The command of ``args`` in ``work``."""
    output: Any
    if args.command == "suite":
        output = run_suite(checkouts, args.storage, work, args.adapt)
    elif args.command == "live":
        output = run_live(checkouts, work)
    else:
        concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
        output = []
        storages = args.storage.split(",")
        if args.command == "tokens":
            output = run_tokens(checkouts, storages, work, args.seconds, concurrency, args.rounds)
        for storage in storages if args.command == "events" else ():
            sub = work / storage
            sub.mkdir(exist_ok=True)
            output.append(run_events(checkouts, storage, sub, args.seconds, concurrency))
    if args.json:
        args.json.write_text(json.dumps(output, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
