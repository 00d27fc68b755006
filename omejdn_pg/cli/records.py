"""Finding, deleting and editing users and clients: what their command groups share.

Every edit is read-modify-write through the host facade (``find`` then
``save``), so it fires the same storage events as the server and the backend
the record lives in stores it; whatever the command does not name is saved as
it was read. A bulk delete checks every name first and deletes inside one
``host.batch()``: all of them, or — if one fails — none of PostgreSQL's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import click

from omejdn_pg.cli.context import CliContext
from omejdn_pg.cli.output import compact
from omejdn_pg.cli.prompts import confirm

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Records(Protocol[R_co]):
    """``host.users`` or ``host.clients``, as far as these helpers use them."""

    def find(self, name: str, /) -> R_co | None: ...

    def delete(self, name: str, /) -> None: ...


def find(records: Records[R], kind: str, name: str) -> R:
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
