"""Finding, deleting and editing users and clients: what their command groups share.

Every edit is read-modify-write through the Host (``find`` then ``save``), so
it fires the same storage events as the server and the backend the record
lives in stores it; whatever the command does not name is saved as it was
read. A bulk delete checks every name first and deletes inside one
``host.batch()``: all of them, or — if one fails — none of PostgreSQL's.
``delete`` and ``set-attr`` are one command each, made for both groups by
:func:`add_delete_and_set_attr`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

from omejdn_pg.cli.context import CliContext, current
from omejdn_pg.cli.output import compact, parse_json
from omejdn_pg.cli.prompts import confirm

if TYPE_CHECKING:
    from omejdn_pg.service.host import Host

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Findable(Protocol[R_co]):
    """``host.users`` or ``host.clients``, as far as finding one goes."""

    def find(self, name: str, /) -> R_co | None: ...


class Records(Findable[R_co], Protocol[R_co]):
    """``host.users`` or ``host.clients``, as far as deleting goes."""

    def delete(self, name: str, /) -> None: ...


class Attributed(Protocol):
    """A user or a client, as far as ``set-attr`` edits it."""

    @property
    def attributes(self) -> dict[str, Any]: ...


class Editable(Findable[Attributed], Protocol):
    """``host.users`` or ``host.clients``, as far as ``set-attr`` uses them."""

    def save(self, record: Any, /) -> None: ...


def find(records: Findable[R], kind: str, name: str) -> R:
    """The user or client ``name``; NotFound (one line) if there is none."""
    from omejdn_pg.errors import NotFound

    found = records.find(name)
    if found is None:
        raise NotFound(f"no {kind} {name!r}")
    return found


def delete_many(
    cli: CliContext,
    records: Records[object],
    kind: str,
    names: Sequence[str],
    *,
    yes: bool,
    dry_run: bool,
) -> None:
    """Delete the users or clients ``names`` after one confirmation, in one batch."""
    from omejdn_pg.errors import NotFound

    unique = list(dict.fromkeys(names))
    missing = [name for name in unique if records.find(name) is None]
    if missing:
        raise NotFound(f"no {kind} {', '.join(map(repr, missing))}; nothing deleted")
    if dry_run:
        for name in unique:
            click.echo(f"would delete {kind} {name}")
        return
    question = (
        f"Delete {kind} {unique[0]}?"
        if len(unique) == 1
        else f"Delete {len(unique)} {kind}s ({', '.join(unique)})?"
    )
    if not confirm(question, yes):
        cli.note("nothing deleted")
        return
    with cli.host().batch():
        for name in unique:
            records.delete(name)
    for name in unique:
        click.echo(f"deleted {kind} {name}")


def attribute_text(attributes: Mapping[str, Any], values: bool) -> str:
    """A table cell of attributes: their names, or with ``values`` ``name=value`` pairs."""
    if not values:
        return ", ".join(sorted(attributes))
    return ", ".join(
        f"{key}={value if isinstance(value, str) else compact(value)}"
        for key, value in sorted(attributes.items())
    )


def summary(set_keys: Sequence[str], unset_keys: Sequence[str], what: str = "") -> str:
    """``set a, b; unset c`` — what an edit did."""
    parts = []
    if set_keys:
        parts.append(f"set {what}{', '.join(set_keys)}")
    if unset_keys:
        parts.append(f"unset {what}{', '.join(unset_keys)}")
    return "; ".join(parts)


def set_attribute(
    records: Editable, kind: str, name: str, key: str, value: Any, *, unset: bool
) -> None:
    """Set attribute ``key`` of the user or client ``name`` to ``value``, or remove it."""
    from omejdn_pg.errors import NotFound

    record: Attributed = find(records, kind, name)
    if unset and key not in record.attributes:
        raise NotFound(f"{kind} {name!r} has no attribute {key!r}")
    if unset:
        del record.attributes[key]
    else:
        record.attributes[key] = value
    records.save(record)


def add_delete_and_set_attr(
    group: click.Group,
    kind: str,
    metavar: str,
    records: Callable[[Host], Any],
    delete_help: str,
) -> None:
    """Give ``group`` (``users``, ``clients``) its ``delete`` and ``set-attr`` commands,
    on ``records(host)`` (``host.users``, ``host.clients``); a name is ``metavar``."""

    @group.command("delete", help=delete_help)
    @click.argument("names", nargs=-1, required=True, metavar=f"{metavar}...")
    @click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
    @click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
    def delete(names: tuple[str, ...], yes: bool, dry_run: bool) -> None:
        cli = current()
        delete_many(cli, records(cli.host()), kind, names, yes=yes, dry_run=dry_run)

    @group.command("set-attr", help=f"Set (or --unset) one attribute of a {kind}.")
    @click.argument("name", metavar=metavar)
    @click.argument("key")
    @click.argument("value", required=False)
    @click.option("--json-value", is_flag=True, help="Parse VALUE as JSON (true, 42, [..], {..}).")
    @click.option("--unset", is_flag=True, help="Remove the attribute instead.")
    def set_attr(name: str, key: str, value: str | None, json_value: bool, unset: bool) -> None:
        if unset == (value is not None):
            raise click.UsageError("give either VALUE or --unset")
        parsed = None if value is None else parse_json(value) if json_value else value
        host = current().host()
        with host.batch():
            set_attribute(records(host), kind, name, key, parsed, unset=unset)
        click.echo(f"{'removed' if unset else 'set'} attribute {key} of {name}")
