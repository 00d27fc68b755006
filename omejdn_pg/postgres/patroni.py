"""Replicas found from the cluster itself: Patroni's REST ``/cluster``, read in the background.

With ``topology: {patroni: [http://db1:8008, ...], refresh: 2s}`` the plugin
reads which members are replicas (and the leader, the synchronous standby,
lag and timeline) from Patroni's REST API instead of a fixed ``replicas:``
list, so a replica added to the cluster is serving reads within one refresh
and a replica removed is dropped, with no configuration change.

What Patroni says is used only to know *where the standbys are*. Whether a
node may serve a given read is still decided by the node itself (the read
router's LSN rule: it must have replayed this process's last commit, and lag
no more than ``max_replica_lag``), and writes never go by it at all: they go
through the configured connection, where libpq's
``target_session_attrs=read-write`` and the server's own
``transaction_read_only`` are the judges. That matters because REST answers
can be stale — after a crash ``/leader`` says 200 for ~2 s, and ``/cluster``
lists the dead leader until its lease expires. A stale answer here costs at
most a read sent to the primary instead of a standby; never a write on the
wrong node.

The trade-off: one HTTP request per ``refresh`` per process (Patroni serves
``/cluster`` from its copy of the consensus store, cheaply), and a replica is
used up to ``refresh`` after it joins. Only the standard library's ``urllib``
is used; the endpoints are tried in order until one answers.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from omejdn_pg.errors import StorageUnavailable
from omejdn_pg.settings.backend import TopologySettings

log = logging.getLogger(__name__)

LEADER: Final = "leader"
SYNC_STANDBY: Final = "sync_standby"
READ_ROLES: Final = frozenset({"replica", SYNC_STANDBY})
"""Roles that may serve reads (a ``standby_leader`` heads a standby cluster: not ours)."""
SERVING_STATES: Final = frozenset({"running", "streaming"})
"""Patroni 3.0 says ``running`` for a replica, later versions ``streaming``."""


@dataclass(frozen=True)
class Member:
    """One member of the cluster as Patroni described it."""

    name: str
    role: str
    """``leader``, ``sync_standby``, ``replica``, ``standby_leader``."""
    state: str
    """``running``, ``streaming``, ``starting``, ``stopped``, ``crashed``..."""
    host: str
    port: int
    timeline: int | None = None
    lag: int | None = None
    """Bytes behind the leader, as Patroni last saw it (None: unknown, or the leader)."""
    api_url: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def connection_params(self) -> dict[str, str]:
        """Where to connect to it; every other keyword comes from the plugin's connection."""
        return {"host": self.host, "port": str(self.port)}

    @property
    def serves_reads(self) -> bool:
        return self.role in READ_ROLES and self.state in SERVING_STATES


@dataclass(frozen=True)
class ClusterView:
    """``GET /cluster`` as one endpoint answered it."""

    members: tuple[Member, ...]
    source: str
    """The endpoint that answered."""
    scope: str | None = None

    @property
    def leader(self) -> Member | None:
        return next((m for m in self.members if m.role == LEADER), None)

    @property
    def replicas(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.serves_reads)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "scope": self.scope,
            "members": [
                {
                    "name": m.name,
                    "address": m.address,
                    "role": m.role,
                    "state": m.state,
                    "timeline": m.timeline,
                    "lag": m.lag,
                }
                for m in self.members
            ],
        }


def parse_cluster(document: object, source: str) -> ClusterView:
    """The members of a ``/cluster`` answer; ValueError when it is not one."""
    if not isinstance(document, Mapping) or not isinstance(document.get("members"), list):
        raise ValueError("not a Patroni /cluster answer (no 'members' list)")
    members = []
    for entry in document["members"]:
        if not isinstance(entry, Mapping) or not entry.get("host") or not entry.get("port"):
            continue  # a member that has not said where it listens cannot be used
        lag = entry.get("lag")
        timeline = entry.get("timeline")
        members.append(
            Member(
                name=str(entry.get("name", "")),
                role=str(entry.get("role", "")),
                state=str(entry.get("state", "")),
                host=str(entry["host"]),
                port=int(entry["port"]),
                timeline=int(timeline) if isinstance(timeline, int) else None,
                lag=int(lag) if isinstance(lag, int) else None,
                api_url=str(entry["api_url"]) if entry.get("api_url") else None,
            )
        )
    scope = document.get("scope")
    return ClusterView(tuple(members), source, scope if isinstance(scope, str) else None)


def fetch_cluster(endpoints: Sequence[str], timeout: float) -> ClusterView:
    """``/cluster`` from the first endpoint that answers; StorageUnavailable if none does."""
    failures = []
    for endpoint in endpoints:
        try:
            with urllib.request.urlopen(f"{endpoint}/cluster", timeout=timeout) as answer:  # noqa: S310 - http(s) only (settings.parse_topology)
                return parse_cluster(json.loads(answer.read()), endpoint)
        except (OSError, ValueError) as error:
            failures.append(f"{endpoint}: {_reason(error)}")
    raise StorageUnavailable("no Patroni REST endpoint answered: " + "; ".join(failures))


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


@dataclass
class PatroniWatch:
    """A daemon thread reading ``/cluster`` every ``refresh``; calls ``on_change`` when the
    set of members that serve reads (or their roles) changed, and once at the start."""

    settings: TopologySettings
    on_change: Callable[[ClusterView], None]
    view: ClusterView | None = None
    refreshed: int = 0
    """Successful reads of ``/cluster`` so far."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _shape: frozenset[tuple[str, str]] | None = None
    _failing: bool = False

    def start(self) -> PatroniWatch:
        # The first answer before returning: reads may use the replicas at once.
        self.refresh()
        self._thread = threading.Thread(
            target=self._run, name="omejdn_pg-patroni-topology", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=self.settings.timeout.total_seconds() * 2 + 1)

    def refresh(self) -> ClusterView | None:
        """Read ``/cluster`` once; the view, or None (the last one is kept) if none answered."""
        try:
            view = fetch_cluster(self.settings.patroni, self.settings.timeout.total_seconds())
        except StorageUnavailable as error:
            if not self._failing:
                log.warning("Patroni topology: %s; keeping the last member list", error)
            self._failing = True
            return None
        if self._failing:
            log.info("Patroni topology: %s answers again", view.source)
        self._failing = False
        self.view = view
        self.refreshed += 1
        shape = frozenset((m.address, m.role) for m in view.replicas)
        if shape != self._shape:
            self._shape = shape
            log.info(
                "Patroni topology: leader %s, replicas serving reads: %s",
                view.leader.address if view.leader is not None else "none",
                ", ".join(sorted(m.address for m in view.replicas)) or "none",
            )
            self.on_change(view)
        return view

    def _run(self) -> None:
        interval = self.settings.refresh.total_seconds()
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception:  # a bug must not end the thread: the last view stays
                log.exception("Patroni topology: refresh failed")


def report(settings: TopologySettings) -> tuple[ClusterView | None, dict[str, Any]]:
    """``check``'s Patroni part: the view (None if no endpoint answered) and its document."""
    try:
        view = fetch_cluster(settings.patroni, settings.timeout.total_seconds())
    except StorageUnavailable as error:
        return None, {"error": str(error)}
    return view, view.as_dict()


def member_rows(document: Mapping[str, Any], in_use: str | None) -> list[tuple[str, ...]]:
    """Table rows: member, address, role, state, timeline, lag, and what the package uses it
    for (writes: the node its connection lands on; reads: a replica it may read from)."""
    rows: list[tuple[str, ...]] = []
    for member in document.get("members", []):
        uses = []
        if member["address"] == in_use:
            uses.append("writes")
        if member["role"] in READ_ROLES and member["state"] in SERVING_STATES:
            uses.append("reads")
        lag = member.get("lag")
        rows.append(
            (
                member["name"],
                member["address"],
                member["role"],
                member["state"],
                "" if member.get("timeline") is None else str(member["timeline"]),
                "" if lag is None else f"{lag} bytes",
                ", ".join(uses),
            )
        )
    return rows
