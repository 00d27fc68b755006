"""``omejdn-pg backup`` and ``restore``: commands over :mod:`omejdn_pg.service.backup` and
:mod:`omejdn_pg.service.restore`.

The service reads, verifies and writes; these commands resolve the database,
open the file (``-`` for stdout or stdin) and print the report. Nothing here
imports SQLAlchemy or the service before the command runs, so ``--help`` stays
quick.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from omejdn_pg.cli.context import Command, current
from omejdn_pg.cli.output import print_document, print_table

if TYPE_CHECKING:
    from omejdn_pg.service.backup import BackupSummary
    from omejdn_pg.service.restore import RestoreReport

STREAM = "-"


@click.command("backup", cls=Command)
@click.argument("file", metavar="FILE")
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
def backup(file: str, force: bool) -> None:
    """Write everything the database holds to FILE (- for stdout), losslessly.

    Users, clients, attributes, every configuration section and every key with its
    lifecycle state, dates and private key (sealed ones stay sealed), from one
    consistent snapshot: safe while the server runs. The file is JSON lines with a
    manifest (format version, schema revision, counts, SHA-256); it is written
    beside FILE with mode 0600 and renamed into place only when complete.
    `omejdn-pg restore` reads it back.
    """
    from pathlib import Path

    from omejdn_pg.service import backup as service

    cli = current()
    if file == STREAM and sys.stdout.isatty():
        raise click.UsageError(
            "refusing to write a backup (password hashes, private keys) to a terminal; "
            "redirect stdout or give a FILE"
        )
    database = cli.database()
    if file == STREAM:
        summary = service.backup(database, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        cli.note(_backup_line(summary))
        return
    summary = service.write_backup_file(database, Path(file), force=force)
    if cli.output_format() != "table":
        print_document(summary.as_dict(), cli.output_format())
        return
    rows = [(table, count) for table, count in summary.counts.items()]
    print_table(["table", "rows"], rows, title=f"backed up to {file}")
    click.echo(_backup_line(summary))


def _backup_line(summary: BackupSummary) -> str:
    return (
        f"{sum(summary.counts.values())} rows of {len(summary.counts)} tables, "
        f"{summary.size} bytes, schema revision {summary.schema_revision}, "
        f"sha256 {summary.sha256}, in {summary.seconds:.2f}s"
    )


@click.command("restore", cls=Command)
@click.argument("file", metavar="FILE")
@click.option("--replace", is_flag=True, help="Replace everything a non-empty database holds.")
@click.option("--dry-run", is_flag=True, help="Verify FILE and the database; write nothing.")
def restore(file: str, replace: bool, dry_run: bool) -> None:
    """Restore a backup FILE (- for stdin) made by `omejdn-pg backup`.

    The file is verified whole first (format, checksum, counts, every value), and
    nothing is written if anything is wrong. The database must be empty (--replace
    deletes what it holds) and at the backup's schema revision or a newer one. All
    of it is one transaction; running servers' caches are told that everything
    changed. No key-encryption key is needed: sealed keys are restored as sealed.
    """
    from omejdn_pg.service import restore as service
    from omejdn_pg.service.backup_format import read_backup

    cli = current()
    if file == STREAM:
        if sys.stdin.isatty():
            raise click.UsageError("restore -: stdin is a terminal; pipe a backup in")
        data, where = sys.stdin.buffer.read(), "stdin"
    else:
        with open(file, "rb") as source:
            data, where = source.read(), file
    verified = read_backup(data, where)
    report = service.restore(cli.database(), verified, replace=replace, dry_run=dry_run)
    if cli.output_format() != "table":
        print_document({"file": where, **report.as_dict()}, cli.output_format())
        return
    _print_restore(report, where)


def _print_restore(report: RestoreReport, where: str) -> None:
    title = f"dry run of {where}, nothing written" if report.dry_run else f"restored {where}"
    rows: list[tuple[Any, ...]] = list(report.counts.items())
    print_table(["table", "rows"], rows, title=title)
    if report.replaced:
        verb = "would replace" if report.dry_run else "replaced"
        click.echo(f"{verb}: " + ", ".join(f"{n} {what}" for what, n in report.replaced.items()))
    if report.sealed:
        keks = ", ".join(f"{kek!r} ({n})" for kek, n in sorted(report.sealed.items()))
        click.echo(
            f"private keys sealed by key-encryption key {keks}: the servers of this "
            "database need it configured (key_encryption) to sign"
        )
    revision = report.backup_revision
    if report.database_revision != revision:
        revision += f" (into a database at {report.database_revision})"
    verdict = "verified" if report.dry_run else "restored"
    click.echo(f"{verdict}: schema revision {revision}, in {report.seconds:.2f}s")
