"""What ``users list`` and ``clients list`` share: their options, the merge, the count line.

PostgreSQL's users or clients are streamed by one statement
(:mod:`omejdn_pg.postgres.repositories.listing`): filtered, searched and paged
by the database. Any other backend the host has — Omejdn's default file
plugin, when it is active — is asked through the host as Omejdn would ask it
(``USER_GET_ALL``/``CLIENT_GET_ALL``) and filtered here with the same rules;
its records come first, then PostgreSQL's, and ``--limit``/``--offset`` page
over the two as one list. The trade-off: with another backend active, its
event also makes PostgreSQL answer a full listing that is thrown away (the
facade has no way to ask one backend alone); with PostgreSQL alone, as in the
CLI's own host, nothing is read twice, and the host is not even built: the
listing needs the database connection only, and building the facade would
load the plugin, the key and the password libraries before the first row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import click

from omejdn_pg.cli.context import CliContext
from omejdn_pg.cli.output import (
    Column,
    json_equal,
    parse_json_or_text,
    split_assignment,
    stream,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from omejdn_pg.postgres.repositories.listing import Counts, Criteria
    from omejdn_pg.service.host import Host

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def listing_options(noun: str, filter_help: str) -> Callable[[F], F]:
    """``--filter``, ``--search``, ``--limit`` and ``--offset`` of a listing of ``noun``."""

    def decorate(function: F) -> F:
        for option in reversed(
            [
                click.option(
                    "--filter",
                    "filters",
                    multiple=True,
                    metavar="KEY=VALUE",
                    help=f"{filter_help} VALUE is JSON if it parses (true, 42, [..]), else "
                    "text; a list matches if it holds VALUE. Repeatable: all must match.",
                ),
                click.option(
                    "--search", metavar="TEXT", help=f"Only {noun} whose name contains TEXT."
                ),
                click.option(
                    "--limit", type=click.IntRange(min=0), metavar="N", help="Show at most N."
                ),
                click.option(
                    "--offset",
                    type=click.IntRange(min=0),
                    default=0,
                    metavar="N",
                    help="Skip the first N.",
                ),
            ]
        ):
            function = option(function)
        return function

    return decorate


def criteria_from(
    filters: Sequence[str], search: str | None, limit: int | None, offset: int
) -> Criteria:
    from omejdn_pg.postgres.repositories.listing import Criteria

    pairs = []
    for text in filters:
        key, value = split_assignment(text)
        pairs.append((key, parse_json_or_text(value)))
    return Criteria(tuple(pairs), search or None, limit, offset).checked()


# --- matching records of other backends, by the rules the SQL applies ---------------


def value_matches(stored: Any, wanted: Any) -> bool:
    """Whether ``stored`` is ``wanted``, or a list holding it."""
    if json_equal(stored, wanted):
        return True
    return isinstance(stored, list) and any(json_equal(item, wanted) for item in stored)


def matches(name: str, fields: Iterable[Mapping[str, Any]], criteria: Criteria) -> bool:
    """Whether a record called ``name`` with ``fields`` (attributes, metadata) is selected."""
    if criteria.search is not None and criteria.search.casefold() not in name.casefold():
        return False
    mappings = list(fields)
    return all(
        any(key in mapping and value_matches(mapping[key], value) for mapping in mappings)
        for key, value in criteria.filters
    )


# --- the listing --------------------------------------------------------------------


@dataclass(frozen=True)
class Source(Generic[R]):
    """How to list one kind of record: from PostgreSQL, and from the host's other backends."""

    noun: str
    group: str
    """``user`` or ``client``: the host's backend group."""
    get_all_event: str
    rows: Callable[[Connection, Criteria], Iterator[R]]
    count: Callable[[Connection, Criteria], Counts]
    everyone: Callable[[Host], list[R]]
    name: Callable[[R], str]
    fields: Callable[[R], Sequence[Mapping[str, Any]]]
    backend: Callable[[R], str | None]


def show_listing(
    cli: CliContext,
    source: Source[R],
    criteria: Criteria,
    view: Callable[[R], Mapping[str, Any]],
    columns: Sequence[Column],
) -> None:
    """Stream the records ``criteria`` selects in the output format; the count on stderr."""
    from omejdn_pg.settings.backend import BACKEND_NAME

    if cli.postgres_alone():
        postgres_serves, others = True, []
    else:
        host = cli.host()
        postgres_serves = BACKEND_NAME in host.loader.backends[source.group]
        others = _other_backends(host, source, postgres_serves)
    selected = [r for r in others if matches(source.name(r), source.fields(r), criteria)]
    local, rest = split_page(selected, criteria)
    fmt = cli.output_format()
    with cli.database().snapshot() as conn:
        records: Iterator[R] = iter(local)
        if postgres_serves and rest.limit != 0:
            records = _chain(local, source.rows(conn, rest))
        shown = stream(fmt, (view(r) for r in records), columns)
        counts = source.count(conn, criteria) if postgres_serves else None
    matching = len(selected) + (counts.matching if counts else 0)
    total = len(others) + (counts.total if counts else 0)
    if fmt == "table":
        narrowed = f" matching, {total} in all" if criteria.narrowed else ""
        cli.note(f"{shown} of {matching} {source.noun}{narrowed}")


def split_page(selected: Sequence[R], criteria: Criteria) -> tuple[list[R], Criteria]:
    """The page's part of ``selected`` (which come first), and the criteria of the rest."""
    start = min(criteria.offset, len(selected))
    end = len(selected) if criteria.limit is None else min(len(selected), start + criteria.limit)
    local = list(selected[start:end])
    remaining = None if criteria.limit is None else criteria.limit - len(local)
    offset = max(0, criteria.offset - len(selected))
    return local, dataclasses.replace(criteria, offset=offset, limit=remaining)


def _chain(first: Iterable[R], then: Iterator[R]) -> Iterator[R]:
    yield from first
    yield from then


def _other_backends(host: Host, source: Source[R], postgres_serves: bool) -> list[R]:
    """Records of every backend but PostgreSQL, by name; none asked if there is none."""
    from omejdn_pg.settings.backend import BACKEND_NAME

    if len(host.loader.handlers(source.get_all_event)) <= int(postgres_serves):
        return []
    found = [r for r in source.everyone(host) if source.backend(r) != BACKEND_NAME]
    return sorted(found, key=source.name)
