"""Point reads beyond one server: on a streaming standby and through PgBouncer.

The rig is the tests' own (``tests/cluster/rig.py``): a primary and one standby
from the embedded server's binaries, and Debian's PgBouncer in transaction
mode in front of the primary. Each label is a Host as Omejdn would run it
(cache off, so every call reaches PostgreSQL); the labels are timed in
alternating rounds, so a machine that gets busier slows them alike, and each
is reported as a ratio to the direct primary of the same run. Where a part of
the rig cannot start here (no binaries, no PgBouncer), the row says why
instead of holding a number.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import bcrypt

from bench.placement import Placement, starting_servers
from omejdn_pg import User
from omejdn_pg.service.host import Host
from omejdn_pg.settings.validation import parse_backend_section


def _section(connection: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"connection": connection, "passwords": {"bcrypt_rounds": 4}, "cache": False, **extra}


def measure(*, quick: bool, placement: Placement | None = None) -> dict[str, Any]:
    """``{"rows": {label: {p50_us, p95_us, ratio}}, "skipped": {label: reason}}``."""
    from tests.cluster.rig import Cluster, PgBouncer, RigUnavailable, compare_latency

    rounds, per_round = (4, 25) if quick else (20, 100)
    skipped: dict[str, str] = {}
    try:
        with starting_servers(placement):
            cluster = Cluster.create(1)
    except RigUnavailable as error:
        return {"rows": {}, "skipped": {"standby": str(error), "pgbouncer": str(error)}}
    with cluster, ExitStack() as stack:
        cluster.create_database("bench")
        primary, standby = cluster.nodes
        direct = dict(primary.settings("bench").params)
        hosts: dict[str, Host] = {
            "primary": stack.enter_context(
                Host.from_settings(parse_backend_section(_section(direct), "bench"))
            )
        }
        replicas = [{"host": "127.0.0.1", "port": str(standby.port)}]
        hosts["standby"] = stack.enter_context(
            Host.from_settings(
                parse_backend_section(
                    _section(direct, replicas=replicas, max_replica_lag="5s"), "bench"
                )
            )
        )
        try:
            with starting_servers(placement):
                bouncer = stack.enter_context(
                    PgBouncer(
                        primary.settings("postgres"),
                        extra={"ignore_startup_parameters": "options"},
                    )
                )
            pooled = dict(bouncer.settings("bench").params)
            hosts["pgbouncer"] = stack.enter_context(
                Host.from_settings(parse_backend_section(_section(pooled), "bench"))
            )
        except RigUnavailable as error:
            skipped["pgbouncer"] = str(error)
        password = bcrypt.hashpw(b"reader", bcrypt.gensalt(4)).decode()
        hosts["primary"].users.add(User(username="reader", password=password, attributes={"n": 1}))
        cluster.wait_replayed()
        time.sleep(0.1)  # let the router see the standby's replay position
        measured = compare_latency(
            {label: (lambda h=host: h.users.find("reader")) for label, host in hosts.items()},
            rounds=rounds,
            per_round=per_round,
        )
    base = measured["primary"][0]
    rows = {
        label: {
            "p50_us": round(median * 1e6, 1),
            "p95_us": round(p95 * 1e6, 1),
            "ratio": round(median / base, 3),
        }
        for label, (median, p95) in measured.items()
    }
    return {"rows": rows, "skipped": skipped}
