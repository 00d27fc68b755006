"""What ``users list`` and ``clients list`` share: their options, the output, the count line.

The listing itself — PostgreSQL's stream, the host's other backends merged
before it, the page over both — is :mod:`omejdn_pg.service.listing`; with
PostgreSQL alone, as in the CLI's own host, the host is not even built (the
listing needs the database connection only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from omejdn_pg.cli.context import CliContext
from omejdn_pg.cli.output import Column, parse_json_or_text, split_assignment, stream

if TYPE_CHECKING:
    from omejdn_pg.service.listing import Criteria, Source

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
    from omejdn_pg.service import listing

    pairs = []
    for text in filters:
        key, value = split_assignment(text)
        pairs.append((key, parse_json_or_text(value)))
    return listing.criteria(pairs, search, limit, offset)


def show_listing(
    cli: CliContext,
    source: Source[R],
    criteria: Criteria,
    view: Callable[[R], Mapping[str, Any]],
    columns: Sequence[Column],
) -> None:
    """Stream the records ``criteria`` selects in the output format; the count on stderr."""
    from omejdn_pg.service import listing

    host = None if cli.postgres_alone() else cli.host()
    fmt = cli.output_format()
    with listing.listing(source, criteria, cli.database(), host) as page:
        shown = stream(fmt, (view(r) for r in page.records), columns)
        matching, total = page.count()
    if fmt == "table":
        narrowed = f" matching, {total} in all" if criteria.narrowed else ""
        cli.note(f"{shown} of {matching} {source.noun}{narrowed}")
