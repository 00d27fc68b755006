"""``omejdn-pg check``: can this database be used, and what does it hold.

The only command besides the listings that sends SQL of its own, and only to
count rows: one ``count`` per table, on one connection of one engine. The
servers behind the configuration (each host of a multi-host connection and
each replica: role, replay lag, the node in use) are asked by
``postgres.topology`` on connections of their own; ``--ready`` asks only
whether a writable primary answers, for a readiness probe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from omejdn_pg.cli.context import CliContext, Command, current
from omejdn_pg.cli.migrate import revision_text
from omejdn_pg.cli.output import Failure, print_document, print_table

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from omejdn_pg.settings.backend import BackendSettings

SCHEMA_HINT = "run `omejdn-pg migrate upgrade`"


@click.command(cls=Command)
@click.option(
    "--ready",
    is_flag=True,
    help="Only probe: exit 0 when a writable primary answers with the schema at head, "
    "1 otherwise (readiness probe).",
)
@click.option(
    "--any-schema",
    is_flag=True,
    help="With --ready: do not require the schema at head (a job that waits for the server "
    "in order to migrate it).",
)
def check(ready: bool, any_schema: bool) -> None:
    """Connect and report: server version, schema revision, pending migrations, row counts,
    and each server's role, replay lag and whether it is the one in use.

    Exits with status 1 when the database is unreachable or its schema is not at head.
    """
    cli = current()
    if any_schema and not ready:
        raise click.UsageError("--any-schema goes with --ready")
    if ready:
        probe(cli, schema=not any_schema)
        return
    report = build_report(cli)
    fmt = cli.output_format()
    if fmt == "table":
        print_report(report)
    else:
        print_document(report, fmt)
    if not report["ok"]:
        where = report["database"]
        if report["revision"] is None:
            raise Failure(f"the database {where} has no omejdn_pg schema; {SCHEMA_HINT}")
        raise Failure(
            f"the schema of {where} is at {report['revision']}, this omejdn_pg needs "
            f"{report['head']}; {SCHEMA_HINT}"
        )


def probe(cli: CliContext, *, schema: bool = True) -> None:
    """``check --ready``: a writable primary answers (with the schema at head unless
    ``schema`` is False), or exit status 1 saying why not.

    An unmigrated database is not ready: the Omejdn service refuses to start on
    it, so a probe that said "ready" would send traffic to a server that fails.
    """
    import dataclasses

    from omejdn_pg.postgres import topology

    answer = topology.readiness(cli.connection())
    if answer.ready and schema:
        behind = schema_behind(cli)
        if behind is not None:
            answer = dataclasses.replace(answer, ready=False, reason=behind)
    fmt = cli.output_format()
    if fmt != "table":
        print_document(answer.as_dict(), fmt)
    elif answer.ready:
        click.echo(f"ready: {answer.reason}")
    if not answer.ready:
        raise Failure(f"not ready: {answer.reason}")


def schema_behind(cli: CliContext) -> str | None:
    """What is wrong with the schema of the database in use, or None when it is at head."""
    from omejdn_pg.postgres import migrate as migrations

    cli.ensure_schema()
    connection = cli.connection()
    database = migrations.connect(connection)
    try:
        revision = migrations.current(database)
    finally:
        database.dispose()
    head = migrations.head()
    if revision == head and not migrations.pending_after(revision):
        return None
    found = "no omejdn_pg schema" if revision is None else f"schema revision {revision}"
    return f"{connection.describe()} has {found}, {head} is needed; {SCHEMA_HINT}"


def build_report(cli: CliContext) -> dict[str, Any]:
    """What ``check`` prints, read on one engine; the servers' roles on connections of their own."""
    from omejdn_pg.postgres import migrate as migrations

    cli.ensure_schema()
    connection = cli.connection()
    database = migrations.connect(connection)
    try:
        facts = database.read(inspect)
        revision = migrations.current(database)
    finally:
        database.dispose()
    head = migrations.head()
    pending = migrations.pending_after(revision)
    return {
        "database": connection.describe(),
        "source": cli.target().source,
        "server_version": facts["server_version"],
        "revision": revision,
        "head": head,
        "pending": pending,
        "rows": facts["counts"],
        "ok": not pending and revision == head,
    } | servers(cli.target().settings)


def servers(settings: BackendSettings) -> dict[str, Any]:
    """Each server as it answers, and with ``topology:`` Patroni's view of the cluster."""
    from omejdn_pg.postgres import patroni, topology

    if settings.topology is None:
        return {"nodes": topology.inspect_backend(settings).as_dict()["nodes"]}
    view, document = patroni.report(settings.topology)
    found = topology.inspect_backend(settings, cluster=view).as_dict()
    return {"nodes": found["nodes"], "patroni": document | {"in_use": found["in_use"]}}


def inspect(conn: Connection) -> dict[str, Any]:
    """The server version and the row count of every omejdn_pg table."""
    from sqlalchemy import text

    version = conn.execute(text("SHOW server_version")).scalar_one()
    tables = list(
        conn.execute(
            text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND (tablename IN ('users', 'clients', 'attributes', 'keys') "
                "OR tablename LIKE 'configuration\\_%') ORDER BY tablename"
            )
        ).scalars()
    )
    counts: dict[str, int] = {}
    for table in tables:
        quoted = conn.dialect.identifier_preparer.quote(table)
        if table == "clients":
            statement = f"SELECT count(DISTINCT client_id) FROM {quoted}"
        else:
            statement = f"SELECT count(*) FROM {quoted}"
        counts[table] = conn.execute(text(statement)).scalar_one()
    return {"server_version": version, "counts": counts}


def print_report(report: dict[str, Any]) -> None:
    pending = report["pending"]
    click.echo(f"database:        {report['database']}  ({report['source']})")
    click.echo(f"server version:  {report['server_version']}")
    click.echo(f"schema revision: {revision_text(report['revision'])} (head: {report['head']})")
    click.echo(f"pending:         {', '.join(pending) if pending else 'none'}")
    rows = [
        (name, count, "distinct client_id" if name == "clients" else "rows")
        for name, count in report["rows"].items()
    ]
    print_table(["table", "count", "of"], rows)
    print_table(["node", "from", "role", "replay lag", "in use"], node_rows(report["nodes"]))
    if "patroni" in report:
        print_patroni(report["patroni"])


def print_patroni(document: dict[str, Any]) -> None:
    """Patroni's members next to what the package uses each one for."""
    from omejdn_pg.postgres import patroni

    if "error" in document:
        click.echo(f"patroni:         {document['error']}")
        return
    click.echo(f"patroni:         cluster {document['scope']} (from {document['source']})")
    print_table(
        ["member", "address", "role", "state", "timeline", "lag", "package uses"],
        patroni.member_rows(document, document.get("in_use")),
    )


def node_rows(nodes: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """``check``'s table of servers: node, where it is configured, role, lag, in use."""
    from omejdn_pg.postgres import topology

    found = topology.Topology(tuple(topology.NodeStatus(**node) for node in nodes))
    return list(topology.describe(found))
