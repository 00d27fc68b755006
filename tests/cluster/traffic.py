"""Traffic for the failover tests: one writer creating users and readers finding them,
each call timed and its error kept, through a host in this process or a service's socket."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from omejdn_pg.entities import User
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import BACKEND_NAME
from tests.kits.passwords import OMEJDN_HASH


@dataclass
class Call:
    started: float
    ended: float
    error: BaseException | None = None
    name: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Caller(Protocol):
    """What the traffic fires events through: a host in this process, or a service's socket."""

    def create(self, name: str) -> None: ...

    def find(self, name: str) -> bool: ...

    def close(self) -> None: ...


@dataclass
class HostCaller:
    host: Host

    def create(self, name: str) -> None:
        # The backend named, as Omejdn's core names it: no configuration read first.
        self.host.users.add(User(username=name, password=OMEJDN_HASH), BACKEND_NAME)

    def find(self, name: str) -> bool:
        return self.host.users.find(name) is not None

    def close(self) -> None:
        pass


@dataclass
class Traffic:
    """A writer creating users and readers finding them, until stopped; each thread opens
    its own caller (one host shared by all, or one service connection each)."""

    callers: Callable[[], Caller]
    prefix: str
    readers: int = 2
    stop: threading.Event = field(default_factory=threading.Event)
    writes: list[Call] = field(default_factory=list)
    reads: list[Call] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Traffic:
        self.threads = [threading.Thread(target=self._write, daemon=True)]
        self.threads += [
            threading.Thread(target=self._read, daemon=True) for _ in range(self.readers)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _write(self) -> None:
        caller = self.callers()
        try:
            for n in range(1_000_000):
                if self.stop.is_set():
                    return
                name = f"{self.prefix}-{n}"
                call = self._call(functools.partial(caller.create, name))
                call.name = name
                self.writes.append(call)
                if call.ok:
                    self.acknowledged.append(name)
                time.sleep(0.01)
        finally:
            caller.close()

    def _read(self) -> None:
        caller = self.callers()
        try:
            while not self.stop.is_set():
                # Read-your-writes: the last create acknowledged must be found.
                latest = self.acknowledged[-1] if self.acknowledged else None

                def find(latest: str | None = latest) -> None:
                    assert caller.find("alice")
                    if latest is not None and not caller.find(latest):
                        self.stale.append(latest)

                self.reads.append(self._call(find))
                time.sleep(0.01)
        finally:
            caller.close()

    @staticmethod
    def _call(operation: Callable[[], object]) -> Call:
        started = time.monotonic()
        try:
            operation()
        except Exception as error:  # every failure a caller would see is recorded
            return Call(started, time.monotonic(), error)
        return Call(started, time.monotonic())
