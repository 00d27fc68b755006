"""``omejdn-pg import`` and ``export``: commands over :mod:`omejdn_pg.service.transfer`.

The engine reads, plans and writes; these commands size its progress bar,
print its report and, with ``-v``, say which fields of which record change.
The engine's report names the records it creates or updates but not the
fields, so :mod:`omejdn_pg.cli.diff` compares the deployment's records with
the stored ones before the import runs — a second read of the directory and
of the store, paid only with ``-v``. What this module relies on of the engine:
``read_deployment(path)`` (users as written, clients, sections, key sets),
``planned_client``, ``keys_differ``, ``import_deployment(...)`` and
``export_deployment(...)``, and their report's ``changed``, ``counts()``,
``as_dict()``, ``notes`` and ``seconds``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import click

from omejdn_pg.cli.context import CliContext, Command, current
from omejdn_pg.cli.output import print_document, print_table, printable

if TYPE_CHECKING:
    from omejdn_pg.cli.diff import FieldChange
    from omejdn_pg.passwords import PasswordPolicy
    from omejdn_pg.service import transfer
    from omejdn_pg.service.host import Host

Diffs = dict[tuple[str, str], list["FieldChange"]]
VERBS: Final = {"create": ("would create", "created"), "update": ("would update", "updated")}


@click.command("import", cls=Command)
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
def import_(directory: Path, dry_run: bool) -> None:
    """Import an Omejdn deployment DIRECTORY (config/*.yml, keys/) into PostgreSQL.

    Every write goes through Omejdn's storage events, all in one transaction: the
    import happens whole or not at all. Only differences are written; what the
    database holds but the directory does not is left alone. Prints a summary per
    kind; -v adds every change and, for each, the fields that change (secrets as
    <changed>).
    """
    cli = current()
    host = cli.host()
    policy = password_policy(cli)
    diffs = field_diffs(directory, host, policy) if cli.verbose else None
    try:
        with import_progress(cli) as progress:
            report = run_import(directory, host, policy, dry_run, progress)
    except KeyboardInterrupt:
        # The import is one transaction: interrupted before its COMMIT, it rolled back.
        raise KeyboardInterrupt("nothing was written (the import is one transaction)") from None
    for note in report.notes:
        cli.note(note)
    if cli.output_format() != "table":
        print_document(import_document(report, diffs), cli.output_format())
    elif not cli.quiet:
        print_import(report, diffs, directory, dry_run)


def password_policy(cli: CliContext) -> PasswordPolicy:
    from omejdn_pg.passwords import PasswordPolicy

    return PasswordPolicy(cli.target().settings.passwords)


@contextmanager
def import_progress(cli: CliContext) -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal (and not -q or -o json|yaml)."""
    err = sys.stderr
    if cli.quiet or cli.output_format() != "table" or not err.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True, highlight=False),
        transient=True,
    )
    with progress:
        yield progress


def run_import(
    directory: Path, host: Host, policy: PasswordPolicy, dry_run: bool, progress: Any
) -> transfer.Report:
    from omejdn_pg.service import transfer

    task = progress.add_task(f"reading {directory}", total=None) if progress else None

    def on_plan(changes: list[transfer.Change]) -> None:
        if progress is not None and not dry_run:
            progress.update(task, description="importing", total=len(changes), completed=0)

    def advance(_change: transfer.Change) -> None:
        if progress is not None:
            progress.advance(task)

    return transfer.import_deployment(
        directory, host, dry_run=dry_run, policy=policy, on_plan=on_plan, progress=advance
    )


def field_diffs(directory: Path, host: Host, policy: PasswordPolicy) -> Diffs:
    """``{(kind, name): field changes}`` of every record of the deployment, against the store."""
    from omejdn_pg.cli import diff
    from omejdn_pg.service import transfer

    deployment = transfer.read_deployment(directory)
    diffs: Diffs = {}
    with host.snapshot():
        users = {u.username: u for u in host.users.all()}
        for entry in deployment.users:
            name = entry["username"]
            diffs[("users", name)] = diff.user_changes(users.get(name), entry, policy)
        stored_clients = {c.client_id: c for c in host.clients.all()}
        for client in deployment.clients:
            planned = transfer.planned_client(deployment, client, private=False)
            stored = stored_clients.get(client.client_id)
            diffs[("clients", client.client_id)] = diff.client_changes(stored, planned)
        for section, data in deployment.sections.items():
            diffs[("config", section)] = diff.section_changes(host.config.read(section), data)
        for (target_type, target), keys in deployment.keys.items():
            stored_keys = host.keys.load(target_type, target)
            diffs[("keys", f"{target_type}/{target}")] = diff.key_changes(
                stored_keys or None, keys, transfer.keys_differ
            )
    return diffs


def import_document(report: transfer.Report, diffs: Diffs | None) -> dict[str, Any]:
    """The report as data; with ``-v`` each change carries its ``fields``."""
    document = report.as_dict()
    if diffs is not None:
        for change in document["changes"]:
            found = diffs.get((change["kind"], change["name"]), [])
            change["fields"] = [field.as_dict() for field in found]
    return document


def print_import(
    report: transfer.Report, diffs: Diffs | None, directory: Path, dry_run: bool
) -> None:
    changed = report.changed
    if diffs is not None:
        for change in changed:
            verb = VERBS[change.action.value][0 if dry_run else 1]
            click.echo(printable(f"{verb} {change.kind} {change.name}"))
            for field in diffs.get((change.kind, change.name), []):
                click.echo(printable(f"    {field.text()}"))
    rows = [(kind, c["create"], c["update"], c["unchanged"]) for kind, c in report.counts().items()]
    title = "dry run, nothing written" if dry_run else f"imported {directory}"
    print_table(["", "added", "changed", "unchanged"], rows, title=title)
    if not changed:
        click.echo(f"nothing changed: the database already holds everything in {directory}")
    else:
        click.echo(
            f"{len(changed)} change(s) {'would be written' if dry_run else 'written'} "
            f"in {report.seconds:.2f}s"
        )


@click.command("export", cls=Command)
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Write into a non-empty directory.")
def export(directory: Path, force: bool) -> None:
    """Export the database to DIRECTORY in Omejdn's layout, from one consistent snapshot.

    Safe while the server runs: everything is read in a single REPEATABLE READ
    transaction. Private keys are written with mode 0600.
    """
    from omejdn_pg.service import transfer

    cli = current()
    report = transfer.export_deployment(cli.host(), directory, force=force)
    for note in report.notes:
        cli.note(note)
    if cli.output_format() != "table":
        print_document(report.as_dict(), cli.output_format())
        return
    if cli.quiet:
        return
    rows = [(kind, c["create"]) for kind, c in report.counts().items()]
    print_table(["", "written"], rows, title=f"exported to {directory}")
    click.echo(f"done in {report.seconds:.2f}s")
