"""The change protocol: every commit counted per writing session, announced, and checked.

The writer's side is :func:`publish_change` (and the triggers of revision
0005, which call the same functions); a ``NOTIFY omejdn_pg_changes`` payload
is a :class:`Notice`, and :class:`Chains` is what a listener keeps to tell a
counter row reached by the notices it heard from one that moved without them.

Why per-session rows and not the alternatives. One row per group made every
writer of the deployment wait for the previous one's commit. Rows per key
(per user) grow with the data and make the poll as large as the user table;
a fixed number of shards still lets two writers collide, so some writes
would wait anyway. A bare sequence stamped on each change cannot tell a
rolled-back number from a lost notice, and a commit-LSN or xid-snapshot
watermark needs a change log that every poll rereads from the oldest running
transaction on, which one long transaction makes unbounded. A session's own
row is contended by nobody, stays as many rows as there are writing
sessions (pruned after two idle hours), and keeps the old check: one SELECT,
values in commit order per row. Its costs: a prepared (two-phase)
transaction keeps its session's row locked until it is resolved, and a
forged NOTIFY (any role may send one) can force flushes, as before.

Nothing can be claimed rather than done: the counters are written only by
the SECURITY DEFINER functions (the server role may read them, not write
them or draw from their sequence), and what a transaction announced is kept
on its own row, not in a setting a session could set. A change is left
unannounced by the triggers only for keys the same transaction announced.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

import psycopg
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc

from omejdn_pg.errors import SchemaOutOfDate
from omejdn_pg.postgres.database.direct import execute
from omejdn_pg.postgres.schema import CHANGE_GROUPS

CHANNEL: Final = "omejdn_pg_changes"
"""The NOTIFY channel; also the counter table's name."""

_PUBLISH: Final = text("SELECT omejdn_pg_changed(:group, VARIADIC CAST(:parts AS text[]))")


def publish_change(conn: Connection, group: str, key: Sequence[str] | None) -> int:
    """Announce, in ``conn``'s transaction, that ``key`` of ``group`` changed; its counter.

    ``key`` is the section, username or client_id, or ``(target_type, target)``
    for ``keys``; None means the whole group (a bulk change). It may be called
    anywhere in the transaction: it locks only this session's own counter row.
    """
    parts = list(key) if key is not None else None
    try:
        (counter,) = execute(conn, _PUBLISH, {"group": group, "parts": parts}).fetchall()[0]
    except sa_exc.ProgrammingError as error:
        if isinstance(error.orig, psycopg.errors.UndefinedFunction):
            raise SchemaOutOfDate(
                "the database has no omejdn_pg_changed() (schema revision 0003): "
                "run `omejdn-pg migrate`"
            ) from error
        raise
    return int(counter)


def announce_groups(conn: Connection, groups: Iterable[str]) -> None:
    """Announce, in ``conn``'s transaction, that everything of ``groups`` may have changed
    (a restore, a bulk rewrite): every read cache drops those groups once it commits."""
    for group in groups:
        publish_change(conn, group, None)


TRIGGER_ANNOUNCED: Final = frozenset({"user", "client"})
"""Groups whose tables announce every changed row themselves (revision 0005): a write
of these needs no call of :func:`publish_change`."""


NOTICES_PER_TRANSACTION: Final = 64
"""After this many notices of one group, a transaction announces the whole group
(``omejdn_pg_changed`` does the same): an import needs no notice per row."""


class Announcements:
    """:func:`publish_change` for many writes that may share a transaction (a batch):
    once a transaction has announced a whole group, further calls cost no round trip."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: weakref.WeakKeyDictionary[object, dict[str, tuple[int, int]]] = (
            weakref.WeakKeyDictionary()
        )

    def publish(self, conn: Connection, group: str, key: Sequence[str] | None) -> int:
        transaction = conn.get_transaction()
        with self._lock:
            made = self._made.setdefault(transaction, {}) if transaction is not None else {}
            count, counter = made.get(group, (0, 0))
        if count >= NOTICES_PER_TRANSACTION:
            return counter
        counter = publish_change(conn, group, key)
        with self._lock:
            made[group] = (NOTICES_PER_TRANSACTION if key is None else count + 1, counter)
        return counter


def encode_key(parts: Iterable[str]) -> str:
    """A key as notices carry it: parts escaped (``%`` ``/`` ``:`` ``*``) and joined by ``/``."""
    return "/".join(_escape(part) for part in parts)


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("/", "%2F").replace(":", "%3A").replace("*", "%2A")


@dataclass(frozen=True)
class Notice:
    """One parsed ``omejdn_pg_changes`` payload."""

    group: str
    key: tuple[str, ...] | None
    """None: the whole group."""
    link: Link | None
    """The link the change adds to its writer's chain; None from the ``keys`` trigger."""
    sent_ms: int | None
    """The server's clock when the change was announced (ms since the epoch)."""

    @property
    def counter(self) -> int | None:
        return None if self.link is None else self.link.counter

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        group, sep, rest = payload.partition(":")
        if not sep or group not in CHANGE_GROUPS:
            return None
        fields = rest.rsplit(":", 2)
        if len(fields) != 3:
            return None
        key, counted, sent = fields
        try:
            link = None
            if counted:
                writer, prior, counter = counted.split("/")
                link = Link(int(writer), int(prior) if prior else 0, int(counter))
            return cls(
                group=group,
                key=None if key == "*" else tuple(unquote(part) for part in key.split("/")),
                link=link,
                sent_ms=int(sent) if sent else None,
            )
        except ValueError:
            return None


@dataclass(frozen=True)
class Link:
    """A counted transaction: its writing session's row went from ``prior`` to ``counter``."""

    writer: int
    """The writing session's backend pid."""
    prior: int
    """The row's counter before (0: the row was new)."""
    counter: int


Row = tuple[str, int]
"""A counter row: (group, writer)."""
Polled = dict[Row, tuple[int, int]]
"""A poll's answer: per counter row, its counter and when it last changed (ms)."""


class Chains:
    """What the listener knows of each counter row: the value its last poll read, and the
    links heard since, so that it can tell whether a row's new value was reached by
    notices it heard (nothing missed) or not (a notice was lost: flush the group).

    Counters rise in commit order per row (one session, one transaction at a time)
    and notices arrive in commit order, so a row's links form one chain; a link
    whose ``prior`` the chain does not reach is a gap.
    """

    def __init__(self) -> None:
        self.polled: dict[Row, int] = {}
        self._links: dict[Row, dict[int, int]] = {}
        self._born: dict[Row, int] = {}
        """Per row seen only in notices, the poll number when it was first heard."""
        self._polls = 0

    def reset(self, counters: Mapping[Row, int]) -> None:
        self.polled = dict(counters)
        self._links.clear()
        self._born.clear()

    def _reach(self, row: Row, start: int, target: int) -> bool:
        links = self._links.get(row, {})
        at = start
        for _ in range(len(links) + 1):
            if at == target:
                return True
            nxt = links.get(at)
            if nxt is None or nxt <= at:
                return False
            at = nxt
        return at == target

    def heard(self, group: str, link: Link) -> bool:
        """Note a notice's link; False if it shows a change missed before it."""
        row = (group, link.writer)
        start = self.polled.get(row, 0)
        missed = link.prior > start and not self._reach(row, start, link.prior)
        if row not in self.polled:
            self._born.setdefault(row, self._polls)
        self._links.setdefault(row, {})[link.prior] = link.counter
        return not missed

    def behind(self, counters: Mapping[Row, int]) -> set[Row]:
        """Rows whose polled value the heard links do not reach from the last poll's."""
        return {
            row
            for row, counter in counters.items()
            if counter != self.polled.get(row, 0)
            and not self._reach(row, self.polled.get(row, 0), counter)
        }

    def advance(self, counters: Mapping[Row, int]) -> None:
        """A poll read ``counters`` (every row there is): start the chains from them."""
        self._polls += 1
        for row, counter in counters.items():
            self.polled[row] = counter
            self._born.pop(row, None)
            links = self._links.get(row)
            if links:
                kept = {prior: nxt for prior, nxt in links.items() if prior >= counter}
                if kept:
                    self._links[row] = kept
                else:
                    del self._links[row]
        for row in [row for row in self.polled if row not in counters]:
            del self.polled[row]  # pruned: a new row starts at 0 with a higher counter
        # Links of rows no poll has shown within two polls belong to nothing (a rolled
        # back insert cannot send a notice, so this is only a bound on memory).
        for row in [row for row, born in self._born.items() if born < self._polls - 2]:
            del self._born[row]
            self._links.pop(row, None)
