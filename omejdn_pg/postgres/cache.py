"""The read cache: point reads served from process memory, invalidated through PostgreSQL.

An identity server reads its configuration, signing keys and clients on every
token request, and they change a few times a day. The cache keeps the answers
of CONFIGURATION_LOAD (per section), KEYS_LOAD (per target), KEYS_LOAD_ALL
(per target type) and, when switched on, CLIENT_GET and USER_GET, and hands
out copies. Its one promise is a bound, not a hope:

    a change whose commit returned to its writer at time T is served by no
    cache of any process from T + ``max_staleness`` on — and by the writing
    process not even once after the write returned.

How that holds, using nothing but PostgreSQL:

* Every committed change is counted and announced in its own transaction.
  ``users``, ``clients`` and ``attributes`` do it themselves: statement
  triggers with transition tables call ``omejdn_pg_count`` with exactly the
  usernames and client_ids a statement touched, whoever writes (this package,
  a Ruby Omejdn sharing the database, hand SQL). Configuration sections and
  key sets are announced by the package's writes (:func:`publish_change`,
  ``omejdn_pg_changed``), and key rows also by their own trigger. A count
  sends ``NOTIFY omejdn_pg_changes, '<group>:<key>:<writer>/<prior>/<counter>:<ms>'``,
  delivered only if the transaction commits. The writing process drops its
  own affected entries before the write returns (read-your-writes).
* The counters live on one row per (group, writing session) — the session's
  backend pid — and take their values from a sequence (revision 0005). A
  session runs one transaction at a time and no other session touches its
  row, so each row rises in commit order, and every notice names the link it
  adds to its row's chain (``prior`` → ``counter``). Writers of a group share
  no lock: one writer holding its transaction open delays nobody, and
  concurrent commits can share a WAL flush.
* Each cache has one listener thread with its own psycopg connection (not
  the pool's: it must stay in LISTEN, on the primary, outside PgBouncer's
  transaction pooling). It drops the entries each notice names. On every
  (re)connect it first LISTENs, then flushes everything, then polls the
  counter rows: nothing committed while it was away survives.
* Every ``max_staleness / 2`` the listener polls the counter rows (one small
  SELECT, its heartbeat). A row whose value the links heard since the last
  poll do not reach, or a notice whose ``prior`` its row's chain does not
  reach, means a counted change came without its notice: that group is
  flushed (:class:`Chains`). The same poll proves the connection alive.
* An entry is served only while the last successful heartbeat was *sent*
  less than ``max_staleness`` ago. Everything committed before that send is
  reflected by then (its notice was handled or its group flushed), which is
  the bound above. A listener that cannot reach the server, or a stalled one,
  therefore makes the cache step aside within ``max_staleness``: reads go to
  the database and nothing read meanwhile is kept, until it is back, has
  flushed and has polled. Two polls further apart than the bound flush
  everything, which is what lets listeners prune rows idle for two hours
  (twice the largest bound) without any listener missing their last value.
* Key sets are also written outside the adapters (the key lifecycle of the
  host facade). The trigger announces those to every process; the writing
  process learns of them synchronously from its own engine — a transaction
  that wrote ``keys`` drops this process's key entries when its connection
  goes back to the pool, after the commit and before the write returns.
* A miss fills the cache only if no invalidation ran while it read (an
  epoch compare) and only from an AUTOCOMMIT read, never from inside a batch
  or snapshot, whose view may never commit.

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

Every hit is a fresh copy a caller may mutate: a User or Client is kept as
marshal's bytes of its fields, a configuration section or key set as the
cache's own copy whose containers are copied on each hit while its strings
and numbers are shared, anything else pickled. Entries are bounded by
``max_entries`` (least recently used first). Negative answers are kept for
configuration and keys (a small, host-chosen key space) but not for users and
clients, whose names come from the network.

What it cannot see: a writer that bypasses this package and changes a
configuration section (a table of its own, made at run time, with no trigger)
without calling ``omejdn_pg_changed``; such a writer must call it in its
transaction, or ``config`` must stay uncached.
"""

from __future__ import annotations

import functools
import logging
import marshal
import pickle
import random
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import psycopg
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy import exc as sa_exc

from omejdn_pg.entities import Client, User
from omejdn_pg.errors import SchemaOutOfDate, first_line
from omejdn_pg.postgres.readpool import node_read_only
from omejdn_pg.postgres.schema import CHANGE_GROUPS, CLIENT_CERTIFICATE_TARGET_TYPE, KeyRecord
from omejdn_pg.settings import CacheSettings, ConnectionSettings

log = logging.getLogger(__name__)

CHANNEL: Final = "omejdn_pg_changes"
"""The NOTIFY channel; also the counter table's name."""
LISTENER_APPLICATION_NAME: Final = "omejdn_pg-cache-listener"
"""``application_name`` of the listener's connection (``pg_stat_activity``)."""

CacheKey = tuple[str, ...]
"""``(kind, *identifiers)``: ``config``, ``keys``, ``keys_all``, ``client``, ``user``."""

CONFIG: Final = "config"
KEYS: Final = "keys"
KEYS_ALL: Final = "keys_all"
CLIENT: Final = "client"
USER: Final = "user"
_GROUP_OF_KIND: Final = {
    CONFIG: "config",
    KEYS: "keys",
    KEYS_ALL: "keys",
    CLIENT: "client",
    USER: "user",
}

_LISTENER_DEFAULTS: Final = {
    "connect_timeout": "5",
    # LISTEN works only on a primary, and only a primary's writers notify.
    "target_session_attrs": "read-write",
    # A peer that vanished without a FIN must not hold the listener for
    # TCP's two hours; the serving bound never depends on these.
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}
_FIRST_RETRY: Final = 0.05
_LAST_RETRY: Final = 2.0
_TICK: Final = 0.1
"""Longest the listener waits for notices before checking its clock and stop flag."""
_SAMPLES: Final = 10000
_MARSHAL_VERSION: Final = 2

_PUBLISH: Final = text("SELECT omejdn_pg_changed(:group, VARIADIC CAST(:parts AS text[]))")
_POLL: Final = (
    "SELECT name, writer, counter, floor(extract(epoch FROM changed_at) * 1000)::bigint "
    f"FROM {CHANNEL}"
)
_PRUNE: Final = "SELECT omejdn_pg_changes_prune()"
PRUNE_INTERVAL: Final = 60.0
"""Seconds between a listener's calls to prune counter rows idle for two hours."""


# --- the writer's side ------------------------------------------------------------


def publish_change(conn: Connection, group: str, key: Sequence[str] | None) -> int:
    """Announce, in ``conn``'s transaction, that ``key`` of ``group`` changed; its counter.

    ``key`` is the section, username or client_id, or ``(target_type, target)``
    for ``keys``; None means the whole group (a bulk change). It may be called
    anywhere in the transaction: it locks only this session's own counter row.
    """
    parts = list(key) if key is not None else None
    try:
        counter = conn.execute(_PUBLISH, {"group": group, "parts": parts}).scalar_one()
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


def affected(group: str, key: tuple[str, ...]) -> list[CacheKey] | None:
    """The entries a change of ``key`` in ``group`` can alter; None if ``key`` is malformed.

    Clients carry their JWKS (key target ``clients/<client_id>``), so a client
    change alters that key set and a change of that key set alters the client.
    """
    if group == "keys" and len(key) == 2:
        target_type, target = key
        found: list[CacheKey] = [(KEYS, target_type, target), (KEYS_ALL, target_type)]
        if target_type == CLIENT_CERTIFICATE_TARGET_TYPE:
            found.append((CLIENT, target))
        return found
    if group == "client" and len(key) == 1:
        return [
            (CLIENT, key[0]),
            (KEYS, CLIENT_CERTIFICATE_TARGET_TYPE, key[0]),
            (KEYS_ALL, CLIENT_CERTIFICATE_TARGET_TYPE),
        ]
    if group in ("config", "user") and len(key) == 1:
        return [(group, key[0])]
    return None


def belongs(entry: CacheKey, group: str) -> bool:
    """Whether a change of the whole ``group`` can alter ``entry``."""
    kind = entry[0]
    if group == "keys":
        return kind in (KEYS, KEYS_ALL, CLIENT)
    if group == "client":
        return kind == CLIENT or (
            kind in (KEYS, KEYS_ALL) and entry[1] == CLIENT_CERTIFICATE_TARGET_TYPE
        )
    return kind == group


def group_of(entry: CacheKey) -> str:
    return _GROUP_OF_KIND.get(entry[0], entry[0])


def listener_connection(
    connection: ConnectionSettings, settings: CacheSettings
) -> ConnectionSettings:
    """The listener's libpq keywords: ``connection``, then ``listen_connection`` over it."""
    own = settings.listen_connection.params
    params = {**_LISTENER_DEFAULTS, **connection.params, **own}
    params["application_name"] = own.get("application_name", LISTENER_APPLICATION_NAME)
    return ConnectionSettings(params)


# --- the cache ----------------------------------------------------------------------


@dataclass(frozen=True)
class Miss:
    """What :meth:`ReadCache.get` returns when it has no answer."""

    token: int | None
    """Hand it to :meth:`ReadCache.fill` with the value read; None: do not fill."""


Copier = Callable[[], Any]
"""Returns a fresh copy of a cached answer on every call."""

_SHARED: Final = frozenset({str, int, float, bool, type(None)})
"""Immutable JSON values: every copy may hold the same object."""


def _copier(owned: Any) -> Copier:
    """Fresh copies of ``owned``, a JSON value that only the cache holds.

    Containers are copied (each with its own C-level ``copy``, then the nested
    ones replaced by their copies); strings and numbers are shared, since
    nothing can change them (for which values this pays, see :func:`_freeze`).
    Anything other than dicts, lists and JSON scalars is refused (TypeError).
    """
    kind = type(owned)
    if kind in _SHARED:
        return lambda: owned
    if kind is dict:
        members: Iterable[tuple[Any, Any]] = owned.items()
    elif kind is list:
        members = enumerate(owned)
    else:
        raise TypeError(f"not a JSON value: {kind.__name__}")
    nested: list[tuple[Any, Copier]] = []
    for where, inner in members:
        inner_kind = type(inner)
        if inner_kind is dict or inner_kind is list:
            nested.append((where, _copier(inner)))
        elif inner_kind not in _SHARED:
            raise TypeError(f"not a JSON value: {inner_kind.__name__}")
    shallow: Copier = owned.copy
    if not nested:
        return shallow
    replaced = tuple(nested)

    def copy() -> Any:
        fresh = shallow()
        for where, inner_copy in replaced:
            fresh[where] = inner_copy()
        return fresh

    return copy


def _entity_copier(kind: type[Any], state: bytes) -> Copier:
    """Copies of a dataclass instance, made as pickle makes them: a new instance
    given its state, here rebuilt from marshal's bytes."""
    new = object.__new__
    loads = marshal.loads

    def copy() -> Any:
        instance = new(kind)
        instance.__dict__ = loads(state)
        return instance

    return copy


_ENTITIES: Final = frozenset({User, Client})
"""The entities cached by their state: plain dataclasses, whose fields are JSON values."""


def _freeze(value: Any) -> Copier:
    """A copier of ``value`` as it is now: later changes to ``value`` do not reach it.

    Users and clients are many, each read now and then, so a hit usually finds
    its entry out of the CPU's caches: a compact blob that marshal rebuilds
    touches fewer cache lines than a tree of shared objects (a cold client with
    a JWK Set: 1.4 µs against 3 µs). Configuration sections and key sets are
    few and read on every token request, so they stay hot, and copying only
    their containers wins (a signing set: 0.5 µs against 1.9 µs).
    """
    kind = type(value)
    try:
        if kind in _ENTITIES:
            # Version 2 writes no back-references: it loads fastest, and a
            # shared sub-object comes back as two copies, as JSON would.
            return _entity_copier(kind, marshal.dumps(vars(value), _MARSHAL_VERSION))
        owned = marshal.loads(marshal.dumps(value, _MARSHAL_VERSION))  # noqa: S302 - our bytes
        return _copier(owned)
    except (ValueError, TypeError):  # not plain JSON-shaped data: pickle copies it
        return functools.partial(pickle.loads, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


class ReadCache:
    """Entries, their invalidation, and the listener thread that keeps them honest."""

    def __init__(
        self,
        settings: CacheSettings,
        connection: ConnectionSettings,
        *,
        groups: Iterable[str] | None = None,
    ) -> None:
        self.settings = settings
        self.groups = frozenset(settings.groups if groups is None else groups) & set(CHANGE_GROUPS)
        self.max_staleness = settings.max_staleness
        self.connection = listener_connection(connection, settings)
        self._lock = threading.Lock()
        self._entries: OrderedDict[CacheKey, Copier] = OrderedDict()
        self._epoch = 0
        """Bumped by every invalidation: a fill that read before one is not kept."""
        self._fresh_until = 0.0
        """Monotonic time until which entries may be served (last heartbeat's send + bound)."""
        self._serving = False
        self._chains = Chains()
        """The counter rows as last polled, and the links heard since."""
        self._hits = dict.fromkeys(CHANGE_GROUPS, 0)
        self._misses = dict.fromkeys(CHANGE_GROUPS, 0)
        self._counts = dict.fromkeys(
            (
                "bypassed",
                "fills",
                "fills_dropped",
                "evictions",
                "invalidations",
                "notices",
                "flushes",
                "step_asides",
                "connects",
                "heartbeats",
                "gaps",
            ),
            0,
        )
        self._staleness: deque[float] = deque(maxlen=_SAMPLES)
        self._last_heartbeat: float | None = None
        self._closed = False
        self._listener = _Listener(self)
        self._watch: _KeyWriteWatch | None = None
        self._subscribers: list[Callable[[frozenset[str] | None], None]] = []

    def __repr__(self) -> str:
        return (
            f"ReadCache(groups={sorted(self.groups)}, max_staleness={self.max_staleness}, "
            f"listener={self.connection.describe()})"
        )

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> ReadCache:
        self._listener.start()
        return self

    def watch_key_writes(self, engine: Engine) -> None:
        """Drop key entries after any transaction of ``engine`` that wrote ``keys`` ends."""
        if self._watch is None:
            self._watch = _KeyWriteWatch(engine, self)

    def close(self) -> None:
        """Stop the listener (its connection closes with it) and serve nothing more."""
        self._closed = True
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._listener.stop()
        with self._lock:
            self._fresh_until = 0.0
            self._serving = False
            self._entries.clear()
            self._epoch += 1

    def subscribe(self, listener: Callable[[frozenset[str] | None], None]) -> Callable[[], None]:
        """Call ``listener(groups)`` whenever entries of ``groups`` are dropped; returns the
        unsubscribe. ``None`` means every group: a flush (a reconnect, a notice that may have
        been missed), the cache stepping aside or closing. Called on the listener's or a
        writer's thread with the cache's lock held, so it must only record and return; it
        is not told when the cache stops serving for want of a heartbeat (ask
        :attr:`serving`).
        """
        with self._lock:
            self._subscribers.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._subscribers:
                    self._subscribers.remove(listener)

        return unsubscribe

    def _tell_locked(self, groups: frozenset[str] | None) -> None:
        for listener in self._subscribers:
            try:
                listener(groups)
            except Exception:  # a subscriber never breaks invalidation
                log.exception("read cache: a change subscriber failed")

    def wait_until_serving(self, timeout: float) -> bool:
        """Block until the listener has connected and polled (or ``timeout`` seconds pass)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serving:
                return True
            time.sleep(0.01)
        return self.serving

    @property
    def serving(self) -> bool:
        return time.monotonic() <= self._fresh_until

    def caches(self, group: str) -> bool:
        return group in self.groups

    # --- reads -----------------------------------------------------------------------

    def get(self, key: CacheKey, group: str | None = None) -> Any:
        """A copy of the cached answer for ``key`` (of ``group``), or a :class:`Miss`."""
        group = group or group_of(key)
        with self._lock:
            if time.monotonic() > self._fresh_until:
                self._counts["bypassed"] += 1
                stepped = self._step_aside_locked()
                entry = None
                token = None
            else:
                entry = self._entries.get(key)
                if entry is None:
                    self._misses[group] += 1
                    token = self._epoch
                else:
                    self._entries.move_to_end(key)
                    self._hits[group] += 1
                stepped = False
        if stepped:
            log.warning(
                "read cache: no heartbeat from its listener within %gs; "
                "reads go to the database until it is back",
                self.max_staleness,
            )
        if entry is None:
            return Miss(token)
        return entry()

    def fill(self, key: CacheKey, value: Any, token: int | None) -> None:
        """Keep ``value`` (read after :meth:`get` gave ``token``) unless something changed since."""
        if token is None:
            return
        try:
            entry = _freeze(value)
        except (TypeError, ValueError, pickle.PicklingError, AttributeError):
            log.debug("read cache: %s cannot be copied; not cached", key[0], exc_info=True)
            return
        with self._lock:
            if token != self._epoch or time.monotonic() > self._fresh_until:
                self._counts["fills_dropped"] += 1
                return
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._counts["fills"] += 1
            while len(self._entries) > self.settings.max_entries:
                self._entries.popitem(last=False)
                self._counts["evictions"] += 1

    # --- invalidation ------------------------------------------------------------------

    def invalidate(self, group: str, key: Sequence[str] | None) -> None:
        """Drop what a write of this process changed (before the write returns)."""
        with self._lock:
            self._drop_locked(group, tuple(key) if key is not None else None)

    def _drop_locked(self, group: str, key: tuple[str, ...] | None) -> int:
        entries = affected(group, key) if key is not None else None
        self._epoch += 1
        if entries is None:
            doomed = [entry for entry in self._entries if belongs(entry, group)]
        else:
            doomed = [entry for entry in entries if entry in self._entries]
        for entry in doomed:
            del self._entries[entry]
        self._counts["invalidations"] += len(doomed)
        self._tell_locked(frozenset((group,)))
        return len(doomed)

    def _flush_locked(self, groups: Iterable[str] | None = None) -> None:
        self._epoch += 1
        self._counts["flushes"] += 1
        if groups is None:
            self._entries.clear()
            self._tell_locked(None)
            return
        for group in groups:
            self._drop_locked(group, None)

    def _step_aside_locked(self) -> bool:
        """Note that the cache stopped serving; True the first time per outage."""
        if not self._serving:
            return False
        self._serving = False
        self._counts["step_asides"] += 1
        return True

    # --- the listener's side -------------------------------------------------------------

    def _on_connect(self) -> None:
        with self._lock:
            self._counts["connects"] += 1
            self._flush_locked()

    def _on_down(self, reason: str) -> bool:
        """The listener lost (or could not get) its connection; True if that ends serving."""
        with self._lock:
            self._fresh_until = 0.0
            self._entries.clear()
            self._epoch += 1
            self._tell_locked(None)
            return self._step_aside_locked()

    def _baseline(self, counters: Polled) -> None:
        with self._lock:
            self._chains.reset({row: counter for row, (counter, _) in counters.items()})

    def _on_notice(self, payload: str) -> None:
        notice = Notice.parse(payload)
        received_ms = time.time() * 1000
        with self._lock:
            self._counts["notices"] += 1
            if notice is None:
                log.warning("read cache: unreadable notice %r; flushing everything", payload[:200])
                self._flush_locked()
                return
            if notice.link is not None and not self._chains.heard(notice.group, notice.link):
                # The writer counted a transaction in between whose notice never came.
                self._counts["gaps"] += 1
                self._flush_locked([notice.group])
            self._drop_locked(notice.group, notice.key)
            if notice.sent_ms is not None:
                self._staleness.append(max(0.0, received_ms - notice.sent_ms))

    def _behind(self, counters: Polled) -> set[Row]:
        with self._lock:
            return self._chains.behind({row: counter for row, (counter, _) in counters.items()})

    def _on_heartbeat(self, sent: float, counters: Polled, behind: Iterable[Row]) -> None:
        """A poll sent at ``sent`` answered; ``behind``: rows it showed changed unheard."""
        received_ms = time.time() * 1000
        missed = sorted({group for group, _ in behind})
        with self._lock:
            self._counts["heartbeats"] += 1
            last = self._last_heartbeat
            if last is not None and sent - last > self.max_staleness:
                # Polls further apart than the bound: counter rows may have been
                # pruned unseen in between, so nothing kept from before may stay.
                self._flush_locked()
            if missed:
                self._flush_locked(missed)
                for row in behind:
                    self._staleness.append(max(0.0, received_ms - counters[row][1]))
            self._chains.advance({row: counter for row, (counter, _) in counters.items()})
            resumed = False
            if self._closed:
                return
            self._fresh_until = max(self._fresh_until, sent + self.max_staleness)
            resumed = not self._serving and time.monotonic() <= self._fresh_until
            if resumed:
                self._serving = True
            self._last_heartbeat = sent
        if missed:
            log.info("read cache: %s changed without a notice; flushed", ", ".join(missed))
        if resumed:
            log.info(
                "read cache: serving %s, invalidated through %s, bound %gs",
                ", ".join(sorted(self.groups)),
                self.connection.describe(),
                self.max_staleness,
            )

    # --- statistics ----------------------------------------------------------------------

    def stats(self, *, log_line: bool = False) -> dict[str, Any]:
        """Counters and gauges for a metrics exporter (and, with ``log_line``, an INFO line)."""
        now = time.monotonic()
        with self._lock:
            counts = dict(self._counts)
            hits = dict(self._hits)
            misses = dict(self._misses)
            samples = sorted(self._staleness)
            entries = len(self._entries)
            last = self._last_heartbeat
            serving = now <= self._fresh_until
        result: dict[str, Any] = {
            "groups": sorted(self.groups),
            "serving": serving,
            "listener_connected": self._listener.connected,
            "entries": entries,
            "max_entries": self.settings.max_entries,
            "max_staleness_ms": self.max_staleness * 1000,
            "hits": sum(hits.values()),
            "misses": sum(misses.values()),
            "hits_by_group": {g: hits[g] for g in sorted(self.groups)},
            "misses_by_group": {g: misses[g] for g in sorted(self.groups)},
            **counts,
            "heartbeat_age_ms": None if last is None else round((now - last) * 1000, 3),
            "staleness_ms": _percentiles(samples),
        }
        if log_line:
            log_stats(result)
        return result


def _percentiles(samples: Sequence[float]) -> dict[str, float | int | None]:
    if not samples:
        return {"samples": 0, "p50": None, "p99": None, "max": None}

    def at(fraction: float) -> float:
        return round(samples[min(len(samples) - 1, int(fraction * len(samples)))], 3)

    return {"samples": len(samples), "p50": at(0.5), "p99": at(0.99), "max": round(samples[-1], 3)}


def log_stats(stats: Mapping[str, Any]) -> None:
    lookups = stats["hits"] + stats["misses"]
    ratio = f"{100 * stats['hits'] / lookups:.1f}%" if lookups else "-"
    staleness = stats["staleness_ms"]
    log.info(
        "read cache: %s, hits %d (%s), misses %d, bypassed %d, entries %d/%d, "
        "invalidations %d, flushes %d, step-asides %d, staleness p50 %s ms p99 %s ms",
        "serving" if stats["serving"] else "stepped aside",
        stats["hits"],
        ratio,
        stats["misses"],
        stats["bypassed"],
        stats["entries"],
        stats["max_entries"],
        stats["invalidations"],
        stats["flushes"],
        stats["step_asides"],
        staleness["p50"],
        staleness["p99"],
    )


# --- key writes of this process that bypass the adapters ------------------------------

_KEYS_TABLE: Final = KeyRecord.__table__
_WROTE_KEYS: Final = "omejdn_pg.cache.wrote_keys"


class _KeyWriteWatch:
    """Engine events: a statement that changed ``keys`` marks its pooled connection; the
    mark is dropped by a rollback and acted on when the connection is checked in (after
    the commit, before ``Database.write`` returns)."""

    def __init__(self, engine: Engine, cache: ReadCache) -> None:
        self._engine = engine
        self._cache = cache
        self._listeners: list[tuple[str, Callable[..., None]]] = [
            ("after_cursor_execute", self._executed),
            ("rollback", self._rolled_back),
            ("checkin", self._checked_in),
        ]
        for name, listener in self._listeners:
            event.listen(engine, name, listener)

    def close(self) -> None:
        for name, listener in self._listeners:
            event.remove(self._engine, name, listener)

    @staticmethod
    def _executed(conn: Connection, *args: Any) -> None:
        context = args[3]
        if context is None or not (context.isinsert or context.isupdate or context.isdelete):
            return
        compiled = context.compiled
        if compiled is not None and getattr(compiled.statement, "table", None) is _KEYS_TABLE:
            conn.info[_WROTE_KEYS] = True

    @staticmethod
    def _rolled_back(conn: Connection) -> None:
        try:
            conn.info.pop(_WROTE_KEYS, None)
        except Exception:  # noqa: BLE001 - an invalidated connection has no info; nothing to undo
            return

    def _checked_in(self, _dbapi_connection: object, record: Any) -> None:
        if record is not None and record.info.pop(_WROTE_KEYS, False):
            self._cache.invalidate("keys", None)


# --- the listener ---------------------------------------------------------------------


class _Listener:
    """One thread, one connection: LISTEN, drop what notices name, poll the counters."""

    def __init__(self, cache: ReadCache) -> None:
        self._cache = cache
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=LISTENER_APPLICATION_NAME, daemon=True
        )
        self.connected = False
        self._established = False
        self._interval = cache.max_staleness / 2
        self._log_interval = cache.settings.log_interval
        self._next_log = time.monotonic() + self._log_interval
        # Listeners of several processes spread their pruning over the interval.
        self._next_prune = time.monotonic() + PRUNE_INTERVAL * random.uniform(0.1, 1.0)  # noqa: S311

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=1.0)
            if self._thread.is_alive():
                log.debug("read cache: listener still waiting on the server; left to exit")

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        delay = _FIRST_RETRY
        outage_since: float | None = None
        warned = False
        while not self._stop.is_set():
            self._established = False
            try:
                self._connect_and_listen()
                continue  # stopped
            except psycopg.Error as error:
                reason = self._cache.connection.scrub(first_line(str(error)))
            except Exception as error:  # a bug must not end the thread: step aside, retry
                log.exception("read cache: listener failed")
                reason = f"listener failed: {type(error).__name__}"
            finally:
                self.connected = False
            self._cache._on_down(reason)
            now = time.monotonic()
            if self._established:
                delay = _FIRST_RETRY  # it was working: reconnect at once
                outage_since, warned = now, False
            elif outage_since is None:
                outage_since = now
            where = self._cache.connection.describe()
            # A short outage (a reconnect, a server restart, a process ending
            # under a dropped database) is worth an INFO line; one that outlasts
            # the staleness bound leaves the cache off, which an operator must see.
            if not warned and now - outage_since > self._cache.max_staleness:
                warned = True
                log.warning(
                    "read cache: listener cannot listen on %s for %.0fs (%s); "
                    "reads go to the database until it can",
                    where,
                    now - outage_since,
                    reason,
                )
            elif self._established or now == outage_since:
                log.info(
                    "read cache: listener %s %s (%s); reconnecting, reads go to the database "
                    "meanwhile",
                    "lost its connection to" if self._established else "cannot listen on",
                    where,
                    reason,
                )
            self._maybe_log_stats()
            self._stop.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            delay = min(delay * 2, _LAST_RETRY)
        self._cache._on_down("closed")

    def _connect_and_listen(self) -> None:
        with psycopg.connect(self._cache.connection.conninfo(), autocommit=True) as conn:
            self.connected = True
            self._listen(conn)

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        cache = self._cache
        conn.execute(f"LISTEN {CHANNEL}")
        # After LISTEN every commit is heard; whatever committed before is flushed.
        cache._on_connect()
        sent, counters = self._poll(conn)
        cache._baseline(counters)
        self._drain(conn)
        cache._on_heartbeat(sent, counters, [])
        self._established = True
        next_beat = sent + self._interval
        while not self._stop.is_set():
            wait = min(max(0.0, next_beat - time.monotonic()), _TICK)
            for notify in conn.notifies(timeout=wait):
                if notify.channel == CHANNEL:
                    cache._on_notice(notify.payload)
            if self._wake.is_set() or time.monotonic() >= next_beat:
                self._wake.clear()
                next_beat = self._heartbeat(conn) + self._interval
            self._maybe_log_stats()

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> float:
        sent, counters = self._poll(conn)
        self._drain(conn)
        behind = self._cache._behind(counters)
        if behind:
            # Notices of commits the poll saw may arrive just after its answer:
            # one more round trip lets them in before calling anything missed.
            self._poll(conn)
            self._drain(conn)
            behind = self._cache._behind({row: counters[row] for row in behind})
        self._cache._on_heartbeat(sent, counters, behind)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL
            conn.execute(_PRUNE)
        return sent

    def _poll(self, conn: psycopg.Connection[Any]) -> tuple[float, Polled]:
        sent = time.monotonic()
        rows = conn.execute(_POLL).fetchall()
        if node_read_only(conn.pgconn):
            # A failover that left this server up (fenced read-only, or a standby now):
            # the writers' commits go elsewhere, so its answers prove nothing. Reconnect;
            # target_session_attrs=read-write finds the new primary.
            raise psycopg.OperationalError("the listener's server became read-only (a failover)")
        return sent, {
            (str(name), int(writer)): (int(counter), int(ms)) for name, writer, counter, ms in rows
        }

    def _drain(self, conn: psycopg.Connection[Any]) -> None:
        for notify in conn.notifies(timeout=0):
            if notify.channel == CHANNEL:
                self._cache._on_notice(notify.payload)

    def _maybe_log_stats(self) -> None:
        if self._log_interval > 0 and time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self._log_interval
            self._cache.stats(log_line=True)
