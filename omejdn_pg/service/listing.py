"""Listing users or clients: PostgreSQL's stream, and the host's other backends merged before it.

PostgreSQL's users or clients are streamed by one statement
(:mod:`omejdn_pg.postgres.repositories.listing`): filtered, searched and paged
by the database. Any other backend the host has — Omejdn's default file
plugin, when it is active — is asked through the host as Omejdn would ask it
(``USER_GET_ALL``/``CLIENT_GET_ALL``) and filtered here with the same rules;
its records come first, then PostgreSQL's, and the limit and offset page over
the two as one list. The trade-off: with another backend active, its event
also makes PostgreSQL answer a full listing that is thrown away (the Host has
no way to ask one backend alone); with PostgreSQL alone nothing is read twice
and no host is needed at all: the listing needs the database connection only,
and building the Host would load the plugin, the key and the password
libraries before the first row. So everything heavy here is imported when a
listing runs, not with the module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from omejdn_pg.entities import Client, User
    from omejdn_pg.postgres.database.unit_of_work import Database
    from omejdn_pg.postgres.repositories.listing import Counts
    from omejdn_pg.postgres.repositories.listing import Criteria as Criteria
    from omejdn_pg.service.host import Host

R = TypeVar("R")


def json_equal(left: Any, right: Any) -> bool:
    """Equality as jsonb sees it: numbers by value, but ``true`` is not ``1``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    return type(left) is type(right) and bool(left == right)


def criteria(
    filters: Sequence[tuple[str, Any]], search: str | None, limit: int | None, offset: int
) -> Criteria:
    """What selects the records: ``KEY=VALUE`` pairs (all must match), a substring of
    the name, a page; checked before any statement runs."""
    from omejdn_pg.postgres.repositories.listing import Criteria

    return Criteria(tuple(filters), search or None, limit, offset).checked()


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


def user_source() -> Source[User]:
    from omejdn_pg.host import events
    from omejdn_pg.postgres.repositories import listing

    return Source(
        noun="users",
        group="user",
        get_all_event=events.USER_GET_ALL,
        rows=listing.users,
        count=listing.count_users,
        everyone=lambda host: host.users.all(),
        name=lambda user: user.username,
        fields=lambda user: [user.attributes],
        backend=lambda user: user.backend,
    )


def client_source() -> Source[Client]:
    from omejdn_pg.host import events
    from omejdn_pg.postgres.repositories import listing

    return Source(
        noun="clients",
        group="client",
        get_all_event=events.CLIENT_GET_ALL,
        rows=listing.clients,
        count=listing.count_clients,
        everyone=lambda host: host.clients.all(),
        name=lambda client: client.client_id,
        fields=lambda client: [client.metadata, client.attributes],
        backend=lambda client: client.backend,
    )


@dataclass
class Page(Generic[R]):
    """The selected records, streamed, and their counts once they have been read."""

    records: Iterator[R]
    count: Callable[[], tuple[int, int]]
    """``(matching, total)``: asked after ``records``, in the same snapshot."""


@contextmanager
def listing(
    source: Source[R], criteria: Criteria, database: Database, host: Host | None = None
) -> Iterator[Page[R]]:
    """The records ``criteria`` selects, inside one snapshot of ``database``.

    ``host`` None: PostgreSQL is the only backend (nothing else is asked).
    """
    from omejdn_pg.settings.backend import BACKEND_NAME

    if host is None:
        postgres_serves, others = True, []
    else:
        postgres_serves = BACKEND_NAME in host.loader.backends[source.group]
        others = _other_backends(host, source, postgres_serves)
    selected = [r for r in others if matches(source.name(r), source.fields(r), criteria)]
    local, rest = split_page(selected, criteria)
    with database.snapshot() as conn:
        records: Iterator[R] = iter(local)
        if postgres_serves and rest.limit != 0:
            records = _chain(local, source.rows(conn, rest))

        def count() -> tuple[int, int]:
            counts = source.count(conn, criteria) if postgres_serves else None
            matching = len(selected) + (counts.matching if counts else 0)
            return matching, len(others) + (counts.total if counts else 0)

        yield Page(records, count)


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
