"""Hot-path benchmarks: each storage event against raw psycopg doing the same work.

Machines here are shared and noisy, so absolute times mean little; every figure
is printed as a ratio to a baseline measured in the same run, interleaved in
rounds so that drift hits both sides alike. The baselines:

* point reads: the same single SQL statement through a bare psycopg connection
  (autocommit, prepared) — the floor for one round trip;
* USER_GET_ALL: the Ruby plugin's way (one query for the users, then one per
  user for its attributes), the N+1 this package exists to beat.

Run: ``python bench/bench_storage.py`` (embedded PostgreSQL) or with
``OMEJDN_PG_BENCH_DSN=postgresql://...`` against a server; ``--users N``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric import rsa

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.host import events
from omejdn_pg.host.facade import Host
from omejdn_pg.postgres import migrate
from omejdn_pg.settings import BackendSettings, ConnectionSettings

HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"


def timed(operation: Callable[[], object], repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        operation()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def compare(
    name: str, ours: Callable[[], object], baseline: Callable[[], object], repeat: int
) -> None:
    for _ in range(20):  # warm: pool, prepared statements, caches
        ours()
        baseline()
    ours_times, base_times = [], []
    for _ in range(5):
        ours_times.append(timed(ours, repeat))
        base_times.append(timed(baseline, repeat))
    mine, base = statistics.median(ours_times), statistics.median(base_times)
    print(
        f"{name:<38} {mine * 1e6:10.1f} us  baseline {base * 1e6:10.1f} us"
        f"  ratio {mine / base:6.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    embedded = None
    dsn = os.environ.get("OMEJDN_PG_BENCH_DSN")
    if not dsn:
        import pgserver

        embedded = pgserver.get_server(
            Path(tempfile.mkdtemp(prefix="omejdn-pg-bench-")), cleanup_mode="delete"
        )
        dsn = embedded.get_uri()
    server = ConnectionSettings.from_url(dsn)
    dbname = f"omejdn_pg_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.conninfo(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"'.encode())
    settings = server.with_params(dbname=dbname)
    try:
        migrate.upgrade(settings)
        run(settings, args.users, args.repeat)
    finally:
        with psycopg.connect(server.conninfo(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)'.encode())
        if embedded is not None:
            embedded.cleanup()


def run(settings: ConnectionSettings, user_count: int, repeat: int) -> None:
    host = Host.from_settings(BackendSettings(connection=settings))
    loader = host.loader
    with host.batch():
        for index in range(user_count):
            host.users.add(
                User(
                    username=f"user{index:05d}",
                    password=HASH,
                    attributes={"email": f"user{index}@example.org", "omejdn": "user", "n": index},
                )
            )
        host.clients.add(
            Client(
                metadata={
                    "client_id": "portal",
                    "client_name": "Portal",
                    "redirect_uris": ["https://portal.example.org/cb"],
                    "grant_types": ["authorization_code", "refresh_token"],
                },
                attributes={"tier": "gold"},
            )
        )
        host.config.write("omejdn", {"issuer": "https://auth.example.org", "token": {"exp": 3600}})
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        host.keys.store("omejdn", "omejdn", KeyMaterial(sk=key))

    raw = psycopg.connect(settings.conninfo(), autocommit=True)
    user_sql = (
        "SELECT u.username, u.password, u.extern, u.consent, "
        "(SELECT jsonb_object_agg(a.key, a.value) FROM attributes a "
        "WHERE a.type = 'user' AND a.identifier = u.username) "
        "FROM users u WHERE u.username = %s"
    )
    client_sql = (
        "SELECT (SELECT jsonb_object_agg(key, value) FROM clients WHERE client_id = %s), "
        "(SELECT jsonb_object_agg(key, value) FROM attributes "
        "WHERE type = 'client' AND identifier = %s)"
    )

    def ruby_style_get_all() -> None:
        for (username,) in raw.execute("SELECT username FROM users").fetchall():
            raw.execute(
                "SELECT key, value FROM attributes WHERE type = 'user' AND identifier = %s",
                (username,),
            ).fetchall()

    print(f"{user_count} users; median of 5 rounds x {repeat} calls; ratio = ours / baseline")
    compare(
        "USER_GET",
        lambda: loader.fire(events.USER_GET, username="user00042"),
        lambda: raw.execute(user_sql, ("user00042",), prepare=True).fetchone(),
        repeat,
    )
    compare(
        "CLIENT_GET",
        lambda: loader.fire(events.CLIENT_GET, client_id="portal"),
        lambda: raw.execute(client_sql, ("portal", "portal"), prepare=True).fetchone(),
        repeat,
    )
    compare(
        "CONFIGURATION_LOAD",
        lambda: loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback={}),
        lambda: raw.execute("SELECT key, value FROM configuration_omejdn", prepare=True).fetchall(),
        repeat,
    )
    compare(
        "KEYS_LOAD (incl. PEM parsing)",
        lambda: loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn"),
        lambda: raw.execute(
            "SELECT type, value FROM keys WHERE target_type = %s AND target = %s",
            ("omejdn", "omejdn"),
            prepare=True,
        ).fetchall(),
        repeat,
    )
    compare(
        f"USER_GET_ALL vs Ruby N+1 ({user_count})",
        lambda: loader.fire(events.USER_GET_ALL),
        ruby_style_get_all,
        max(3, repeat // 50),
    )
    raw.close()
    host.close()


if __name__ == "__main__":
    main()
