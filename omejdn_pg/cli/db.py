"""``omejdn-pg db``: the embedded PostgreSQL (the default when no connection is configured).

The server itself is :mod:`omejdn_pg.cli.embedded`; these commands start, stop
and describe it. ``status`` never starts it; ``start`` and ``url`` do.
"""

from __future__ import annotations

import click

from omejdn_pg.cli.context import Group, current
from omejdn_pg.cli.output import print_document


@click.group(cls=Group)
def db() -> None:
    """Manage the embedded PostgreSQL (the default when no connection is configured)."""


@db.command("start")
def db_start() -> None:
    """Start the embedded PostgreSQL (or find it running), migrate it, print its URL."""
    from omejdn_pg.cli import embedded

    cli = current()
    path = embedded.data_dir()
    status, started = embedded.start(path)
    cli.note(("started" if started else "already running:") + f" the embedded PostgreSQL in {path}")
    cli.migrate_embedded(status)
    print_url(embedded.url(status.connection()))


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL; its data stays."""
    from omejdn_pg.cli import embedded

    path = embedded.data_dir()
    if embedded.stop(path):
        current().note(f"stopped the embedded PostgreSQL in {path}")
    else:
        current().note(f"the embedded PostgreSQL in {path} was not running")


STOPPED_STATUS = 3
"""LSB's "program is not running", so `omejdn-pg db status || ...` reads as for a service."""


@db.command("status")
def db_status() -> None:
    """Whether the embedded PostgreSQL runs, and where (does not start it).

    Exit status 0 when it runs, 3 when it is stopped (as LSB init scripts say).
    """
    from omejdn_pg.cli import embedded

    status = embedded.status(embedded.data_dir())
    fmt = current().output_format()
    if fmt != "table":
        print_document(status.as_dict(), fmt)
    elif status.running:
        click.echo(f"running (pid {status.pid}), data in {status.data_dir}")
        click.echo(f"url: {embedded.url(status.connection())}")
    else:
        click.echo(f"stopped, data in {status.data_dir}")
    if not status.running:
        click.get_current_context().exit(STOPPED_STATUS)


@db.command("url")
def db_url() -> None:
    """Print the embedded PostgreSQL's URL, starting it if needed (for psql, --url)."""
    from omejdn_pg.cli import embedded

    path = embedded.data_dir()
    status, started = embedded.start(path)
    if started:
        current().note(f"started the embedded PostgreSQL in {path}")
    print_url(embedded.url(status.connection()))


def print_url(url: str) -> None:
    """The URL alone (for ``$(omejdn-pg db url)``), or ``{"url": ...}`` with ``-o json|yaml``."""
    fmt = current().output_format()
    if fmt == "table":
        click.echo(url)
    else:
        print_document({"url": url}, fmt)
