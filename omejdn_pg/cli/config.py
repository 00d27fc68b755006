"""``omejdn-pg config``: configuration sections — list, get, set.

``set`` replaces a whole section through CONFIGURATION_STORE, as Omejdn does;
before writing it compares with what is stored, so a write that changes
nothing says "unchanged" and writes nothing, ``--dry-run`` says what would
change, and a mapping is not turned into a list (or back) without
``--replace`` — that changes the section's table, and a typo should not.
"""

from __future__ import annotations

from typing import Any

import click

from omejdn_pg.cli.context import CliContext, Group, current
from omejdn_pg.cli.output import (
    Failure,
    parse_document,
    print_document,
    print_table,
    read_text_source,
    stream,
)


@click.group(cls=Group)
def config() -> None:
    """Configuration sections: list, get, set."""


@config.command("list")
def config_list() -> None:
    """List the configuration sections stored in PostgreSQL."""
    cli = current()
    host = cli.host()
    rows = []
    with host.snapshot():
        for name in host.config.sections():
            data = host.config.read(name)
            rows.append({"section": name, "type": shape(data), "entries": len(data or ())})
    fmt = cli.output_format()
    if fmt != "table":
        stream(fmt, rows, [])
        return
    print_table(["section", "type", "entries"], [tuple(r.values()) for r in rows])
    cli.note(f"{len(rows)} section(s)")


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.ensure_object(CliContext).output = value


@config.command("get")
@click.argument("section")
@click.option(
    "--format",
    type=click.Choice(["yaml", "json"]),
    expose_value=False,
    hidden=True,
    callback=_set_output,
    help="Former name of -o.",
)
def config_get(section: str) -> None:
    """Print a configuration section (YAML unless -o json)."""
    from omejdn_pg.errors import NotFound

    cli = current()
    data = cli.host().config.read(section)
    if data is None:
        raise NotFound(f"configuration section {section!r} has never been written")
    print_document(data, cli.output_format("yaml"))


@config.command("create")
@click.argument("section")
@click.option("--list", "list_section", is_flag=True, help="A list section (default: a mapping).")
@click.option("--replace", is_flag=True, help="Replace a section of the other shape (its content).")
def config_create(section: str, list_section: bool, replace: bool) -> None:
    """Provision an empty SECTION ahead of its first write (as the schema owner), for a
    server whose role may not create tables."""
    created = current().host().config.create(section, list_section=list_section, replace=replace)
    click.echo(f"section {section} " + ("created" if created else "exists already"))


@config.command("set")
@click.argument("section")
@click.argument("source", default="-", metavar="[FILE]")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "yaml", "json"]),
    default="auto",
    show_default=True,
    help="Input format; auto reads YAML, of which JSON is a subset.",
)
@click.option("--replace", is_flag=True, help="Allow turning a mapping into a list or back.")
@click.option("--dry-run", is_flag=True, help="Say what would change; write nothing.")
def config_set(section: str, source: str, fmt: str, replace: bool, dry_run: bool) -> None:
    """Replace a configuration section with the mapping or list in FILE (default: stdin)."""
    from omejdn_pg.postgres.schema import validate_section_name

    validate_section_name(section)
    text, name = read_text_source(source)
    data = parse_document(text, name, fmt) if text.strip() else None
    if data is None:
        # `config set s </dev/null`, or a file of comments only: nothing to store.
        raise Failure(
            f"{name}: the input is empty; give the section as a YAML or JSON mapping or list"
        )
    if not isinstance(data, dict | list):
        raise Failure(
            f"{name}: a configuration section must be a mapping or a list, "
            f"got {type(data).__name__}"
        )
    host = current().host()
    stored = host.config.read(section)
    if stored == data:
        click.echo(f"configuration section {section} unchanged")
        return
    check_shape(section, stored, data, name, replace)
    if dry_run:
        click.echo(f"would write configuration section {section}: {describe(stored, data)}")
        return
    host.config.write(section, data)
    click.echo(f"wrote configuration section {section} ({len(data)} entries)")


def shape(data: Any) -> str:
    return "list" if isinstance(data, list) else "dict"


def check_shape(section: str, stored: Any, data: Any, name: str, replace: bool) -> None:
    """Refuse a mapping over a list (or back) unless ``--replace``."""
    if stored is None or replace or isinstance(stored, list) == isinstance(data, list):
        return
    was, now = ("a list", "a mapping") if isinstance(stored, list) else ("a mapping", "a list")
    raise Failure(
        f"configuration section {section} is {was} and {name} holds {now}; "
        "use --replace to change its shape"
    )


def describe(stored: Any, data: Any) -> str:
    """What writing ``data`` over ``stored`` changes, as a phrase."""
    if stored is None:
        return f"a new section ({len(data)} entries)"
    if isinstance(stored, dict) and isinstance(data, dict):
        parts = []
        for verb, keys in (
            ("adds", [k for k in data if k not in stored]),
            ("changes", [k for k in data if k in stored and stored[k] != data[k]]),
            ("removes", [k for k in stored if k not in data]),
        ):
            if keys:
                parts.append(f"{verb} {', '.join(map(str, keys))}")
        return "; ".join(parts)
    return f"{shape(stored)} of {len(stored)} entries -> {shape(data)} of {len(data)} entries"
