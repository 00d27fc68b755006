"""``omejdn-pg import`` as an operator runs it: a generated deployment, a subprocess, ``--url``.

The deployment directory holds ``config/users.yml`` with N users whose
passwords are already bcrypt hashes (an import of plaintext passwords measures
bcrypt, not the import). It is written as YAML flow mappings, one user per
line — valid YAML that a 100,000-user file takes a second to write. Each size
is imported into a fresh database, then imported again unchanged: the second
run must find nothing to do, and its time is what an idempotent re-run costs.

Times are wall-clock seconds of the whole command, interpreter start-up
included (what the operator waits for); beside them are the seconds the
command's own JSON report gives — reading the directory, planning and
writing, what ``own_users_per_s`` divides by — and the start-up alone is
measured once (``omejdn-pg --help``), so small imports can be read without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from bench import seed
from bench.placement import on_cores
from bench.seed import PasswordHashes
from bench.server import Server
from omejdn_pg.settings.connection import ConnectionSettings

SCRUBBED_ENV: Final = ("OMEJDN_PG_URL", "OMEJDN_PLUGINS", "OMEJDN_PG_DATA")


def command() -> list[str]:
    """The ``omejdn-pg`` console script of this interpreter, else ``python -m omejdn_pg``."""
    script = Path(sys.executable).with_name("omejdn-pg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "omejdn_pg"]


class Passwords(Protocol):
    """The password of user ``index`` in ``users.yml``: a hash, or plaintext to be hashed."""

    def of(self, index: int) -> str: ...


def write_deployment(directory: Path, count: int, hashes: Passwords) -> Path:
    """An Omejdn deployment directory with ``count`` users, their passwords from ``hashes``."""
    config = directory / "config"
    config.mkdir(parents=True, exist_ok=True)
    with (config / "users.yml").open("w", encoding="utf-8") as out:
        for index in range(count):
            user = {
                "username": seed.username(index),
                "password": hashes.of(index),
                "attributes": seed.user_attributes(index),
            }
            out.write(f"- {json.dumps(user)}\n")
    return directory


def _run(
    arguments: list[str],
    extra_env: Mapping[str, str] | None = None,
    cores: frozenset[int] | None = None,
) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run the command (on ``cores`` if given, else the bench's own); wall seconds."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(extra_env or {})
    began = time.perf_counter()
    if cores:
        with on_cores(cores):
            done = subprocess.run(  # checked below, its stderr in the message
                arguments, capture_output=True, text=True, env=env, timeout=1800
            )
    else:
        done = subprocess.run(arguments, capture_output=True, text=True, env=env, timeout=1800)
    elapsed = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(arguments[:1] + arguments[3:])} exited {done.returncode}: "
            f"{done.stderr.strip()[-2000:]}"
        )
    return elapsed, done


def startup_seconds() -> float:
    """Wall time of ``omejdn-pg --help``: the interpreter and the CLI's imports."""
    return min(_run([*command(), "--help"])[0] for _ in range(2))


def import_once(
    settings: ConnectionSettings,
    directory: Path,
    options: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    cores: frozenset[int] | None = None,
) -> dict[str, Any]:
    """Run ``omejdn-pg --url ... [options] import DIR --json``: wall seconds, and what its
    report says; ``extra_env`` added to its environment, on ``cores`` if given."""
    elapsed, done = _run(
        [*command(), "--url", settings.conninfo(), *options, "import", str(directory), "--json"],
        extra_env,
        cores,
    )
    found: dict[str, Any] = {"seconds": round(elapsed, 3), "changes": None, "own_seconds": None}
    try:
        report = json.loads(done.stdout)
    except ValueError:
        return found
    if isinstance(report, dict):
        counts = report.get("counts")
        if isinstance(counts, dict):
            found["changes"] = sum(
                int(per_kind.get(action, 0))
                for per_kind in counts.values()
                if isinstance(per_kind, dict)
                for action in ("create", "update")
            )
        if isinstance(report.get("seconds"), int | float):
            found["own_seconds"] = report["seconds"]
    return found


def measure(server: Server, count: int, hashes: PasswordHashes, workdir: Path) -> dict[str, Any]:
    """Import ``count`` users into a fresh database, then again with nothing changed."""
    directory = write_deployment(workdir / f"deployment-{count}", count, hashes)
    database = server.database(f"import_{count}")
    try:
        first = import_once(database, directory)
        again = import_once(database, directory)
        stored = count_users(database)
    finally:
        server.drop(database)
    if stored != count:
        raise RuntimeError(f"import of {count} users stored {stored}")
    return {
        "users": count,
        "error": None,
        "seconds": first["seconds"],
        "users_per_s": round(count / first["seconds"], 1),
        "changes": first["changes"],
        "own_seconds": first["own_seconds"],
        "own_users_per_s": (
            round(count / first["own_seconds"], 1) if first["own_seconds"] else None
        ),
        "reimport_seconds": again["seconds"],
        "reimport_own_seconds": again["own_seconds"],
        "reimport_changes": again["changes"],
    }


def failed(count: int, error: BaseException) -> dict[str, Any]:
    """The row of an import that did not complete: every figure null, the error said."""
    return {
        "users": count,
        "seconds": None,
        "users_per_s": None,
        "changes": None,
        "own_seconds": None,
        "own_users_per_s": None,
        "reimport_seconds": None,
        "reimport_own_seconds": None,
        "reimport_changes": None,
        "error": f"{type(error).__name__}: {error}",
    }


def count_users(settings: ConnectionSettings) -> int:
    import psycopg

    with psycopg.connect(settings.conninfo()) as conn:
        row = conn.execute("SELECT count(*) FROM users").fetchone()
    return int(row[0]) if row else 0
