"""``omejdn-pg migrate``: schema migrations (Alembic, shipped in the package).

Each command opens one one-connection engine (:func:`omejdn_pg.postgres.migrate.connect`)
and reads the revision before and after its step on it, so ``upgrade`` is one
engine and one connection however many calls it makes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import click

from omejdn_pg.cli.context import Group, current
from omejdn_pg.cli.output import print_document, print_table, stream
from omejdn_pg.cli.prompts import confirm

if TYPE_CHECKING:
    from omejdn_pg.postgres.database.unit_of_work import Database
    from omejdn_pg.settings.connection import ConnectionSettings


GRANT_HELP: Final = (
    "After upgrading, provision Omejdn's known sections and give ROLE DML rights only "
    "(run as the schema owner; the server then runs as ROLE)."
)


@click.group(cls=Group, invoke_without_command=True)
@click.option("--grant", "grant_role", metavar="ROLE", help=GRANT_HELP)
@click.pass_context
def migrate(ctx: click.Context, grant_role: str | None) -> None:
    """Schema migrations (Alembic, shipped in the package).

    Without a subcommand: upgrade to the newest revision, as `migrate upgrade`.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(migrate_upgrade, revision="head", grant_role=grant_role)


@migrate.command("upgrade")
@click.argument("revision", default="head")
@click.option("--grant", "grant_role", metavar="ROLE", help=GRANT_HELP)
def migrate_upgrade(revision: str, grant_role: str | None = None) -> None:
    """Upgrade the schema to REVISION (default: head)."""
    from omejdn_pg.postgres import migrate as migrations

    cli = current()
    connection = cli.connection()
    before, after = run_step(connection, lambda db: migrations.upgrade(db, revision))
    where = connection.describe()
    if before == after:
        summary = f"{where}: already at {revision_text(after)}, nothing to do"
    else:
        summary = f"{where}: upgraded from {revision_text(before)} to {revision_text(after)}"
    if not cli.quiet:
        click.echo(summary)
    if grant_role is not None:
        database = migrations.connect(connection)
        try:
            provisioned = migrations.grant(database, grant_role)
        finally:
            database.dispose()
        made = ", ".join(provisioned) or "none needed"
        if not cli.quiet:
            click.echo(f"{where}: {grant_role} may read and write; sections provisioned: {made}")


@migrate.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def migrate_downgrade(revision: str, yes: bool) -> None:
    """Downgrade the schema to REVISION ('base' drops every table and its data)."""
    from omejdn_pg.postgres import migrate as migrations

    connection = current().connection()
    question = f"Drop every omejdn_pg table of {connection.describe()} with its data?"
    if revision == "base" and not confirm(question, yes):
        current().note("nothing changed")
        return
    before, after = run_step(connection, lambda db: migrations.downgrade(db, revision))
    if not current().quiet:
        click.echo(
            f"{connection.describe()}: downgraded from {revision_text(before)} "
            f"to {revision_text(after)}"
        )


@migrate.command("current")
def migrate_current() -> None:
    """Print the database's schema revision (nothing if it was never migrated)."""
    from omejdn_pg.postgres import migrate as migrations

    cli = current()
    connection = cli.connection()
    revision = cli.first_contact(lambda: migrations.current(connection))
    if cli.output_format() == "table":
        click.echo(revision or "")
    else:
        print_document({"revision": revision, "head": migrations.head()}, cli.output_format())
    if revision is None:
        cli.note("the database has no omejdn_pg schema yet; run `omejdn-pg migrate upgrade`")


@migrate.command("history")
def migrate_history() -> None:
    """List the packaged schema revisions, oldest first."""
    from omejdn_pg.postgres import migrate as migrations

    head = migrations.head()
    rows = [{"revision": r, "message": m, "head": r == head} for r, m in migrations.history()]
    fmt = current().output_format()
    if fmt != "table":
        stream(fmt, rows, [])
        return
    print_table(
        ["revision", "message", ""],
        [(r["revision"], r["message"], "(head)" if r["head"] else "") for r in rows],
    )


def revision_text(revision: str | None) -> str:
    return revision or "none (empty database)"


def run_step(
    connection: ConnectionSettings, step: Callable[[Database], None]
) -> tuple[str | None, str | None]:
    """Run one migration ``step`` on one connection; the revisions before and after it."""
    from omejdn_pg.postgres import migrate as migrations

    database = migrations.connect(connection)
    try:
        before = current().first_contact(lambda: migrations.current(database))
        step(database)
        return before, migrations.current(database)
    finally:
        database.dispose()
