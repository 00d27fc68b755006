"""The storage service: a Unix socket where Omejdn's Ruby plugin fires storage events.

One thread per connection, so no request waits behind another's round trip
to PostgreSQL: a Ruby process keeps one connection per thread, and the host
(the loader, the plugin adapters, the Database's pools, the read cache) is
shared by all of them and safe to call from many threads. A thread costs a
little memory per idle connection; a pool of workers would bound that but
let a slow request hold up the requests queued behind it.

Who may connect: the socket is made 0600 (0660 with a group), and every peer
is checked again by its credentials (``SO_PEERCRED``): its uid must be
allowed (this process's own and root by default), or its gid the socket's
group. A refused peer gets one error line and is disconnected.

How many: at most ``max_connections`` at once (each holds a thread and may
hold a database connection); the one over the bound gets one JSON-RPC error
line and is closed, and the log says so once until the service has room
again.

Stopping (SIGTERM, SIGINT): the socket stops accepting and is removed; a
connection waiting for its next request, or streaming changes, is closed at
once; only a request under way is awaited (its answer is sent, then the
connection closes), and all of them together for at most ``drain_timeout``.
The stop is bounded by design rather than by every client's manners: a
signal may be delivered to any thread, so it is also written to the wake-up
pipe (``signal.set_wakeup_fd``), which the accepting loop selects on — a
Python handler alone runs only when the main thread next runs, and a main
thread blocked in ``select`` would never see it. A reply blocked on a peer
that does not read gives up after :data:`SEND_TIMEOUT`. The host is closed
last. A stop that still outlives its bound by 5 s writes every thread's stack
to the log (``faulthandler``), so a hang says where it is.

Over 400 lines: a connection's whole life — accepted or refused over the
bound, greeted, answered, streamed to, drained — is one state machine, read
best in one module.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import select
import signal
import socket
import struct
import threading
import time
from typing import Any, BinaryIO, Final

from omejdn_pg.bridge import endpoint, protocol, watch
from omejdn_pg.bridge.answers import answer
from omejdn_pg.bridge.protocol import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_LINE,
    PROTOCOL_VERSION,
    STORAGE_ERROR,
    ProtocolError,
    Request,
    RequestError,
)
from omejdn_pg.errors import ConfigurationError, OmejdnPgError, StorageUnavailable
from omejdn_pg.service.host import Host

log = logging.getLogger(__name__)

_PEERCRED: Final = struct.Struct("3i")
WATCH: Final = "watch"
MAX_CONNECTIONS: Final = 64
SEND_TIMEOUT: Final = 10.0
"""Seconds a reply may wait for a peer that does not read before the connection is dropped."""


class _Connection:
    """A connection's thread and whether a request of it is under way."""

    __slots__ = ("busy", "closing", "thread")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.busy = False
        self.closing = False


class Service:
    """The listening socket, its connections and their threads."""

    def __init__(
        self,
        path: str,
        host: Host,
        *,
        allowed_uids: frozenset[int] = frozenset(),
        group: int | None = None,
        interval: float = 1.0,
        drain_timeout: float = 30.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.path = path
        self.host = host
        self.allowed_uids = frozenset({os.getuid(), 0}) | allowed_uids
        self.group = group
        self.interval = interval
        self.drain_timeout = drain_timeout
        self.max_connections = max_connections
        self.name = endpoint.service_name()
        self.stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = os.pipe()
        # Non-blocking, as signal.set_wakeup_fd requires: a full pipe already wakes.
        os.set_blocking(self._wake_w, False)
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, _Connection] = {}
        self._full = False
        self.served = 0
        self.failed = 0

    # --- the socket ----------------------------------------------------------------

    @property
    def wake_fd(self) -> int:
        """The write end of the pipe that wakes the accepting loop."""
        return self._wake_w

    def bind(self) -> None:
        """Create the socket at ``path``, replacing a stale one; refuse a live one."""
        self._listener, self._inode = endpoint.bind(self.path, self.group)

    def stop(self) -> None:
        """Ask the service to stop (safe from a signal handler)."""
        self.stopping.set()
        # A full pipe means a wake-up is pending anyway.
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def serve(self) -> None:
        """Accept connections until :meth:`stop`; then drain and clean up."""
        listener = self._listener
        if listener is None:
            raise RuntimeError("Service.bind() has not run")
        try:
            while not self.stopping.is_set():
                # The timeout is a backstop only: a stop writes to the wake-up pipe.
                ready, _, _ = select.select([listener.fileno(), self._wake_r], [], [], 1.0)
                if self._wake_r in ready:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 512)
                if listener.fileno() in ready and not self.stopping.is_set():
                    self._accept(listener)
        finally:
            endpoint.notify("STOPPING=1")
            listener.close()
            endpoint.remove(self.path, self._inode)
            self._drain()
            with contextlib.suppress(ValueError):  # ValueError: not the main thread
                installed = signal.set_wakeup_fd(-1)
                if installed != self._wake_w:
                    signal.set_wakeup_fd(installed)
            os.close(self._wake_r)
            os.close(self._wake_w)
            # A late stop() must not write to a descriptor number reused meanwhile.
            self._wake_w = -1

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: say it, keep serving the others
            log.error("accept failed: %s", exc.strerror)
            return
        conn.setblocking(True)
        with self._lock:
            full = len(self._connections) >= self.max_connections
            if not full:
                thread = threading.Thread(
                    target=self._connection, args=(conn,), name="omejdn-pg-bridge", daemon=True
                )
                self._connections[conn] = _Connection(thread)
            elif not self._full:
                log.error(
                    "refusing connections: %d are open (--max-connections %d)",
                    len(self._connections),
                    self.max_connections,
                )
            self._full = full
        if full:
            self._refuse(conn)
        else:
            thread.start()

    def _refuse(self, conn: socket.socket) -> None:
        """One error line to a connection over the bound, then close it."""
        message = (
            f"the storage service has {self.max_connections} connections open, its bound "
            "(--max-connections); try again later"
        )
        try:
            conn.settimeout(1.0)
            _send(conn, protocol.error(None, STORAGE_ERROR, message, "StorageUnavailable"))
        except OSError:
            pass
        finally:
            conn.close()

    def _drain(self) -> None:
        """Close idle connections now; await requests under way, all within ``drain_timeout``."""
        with self._lock:
            connections = dict(self._connections)
            for conn, state in connections.items():
                state.closing = True
                # Idle (or streaming changes): nothing to finish, closed now. Busy: its
                # answer is sent, then its next read finds the end.
                how = socket.SHUT_RD if state.busy else socket.SHUT_RDWR
                with contextlib.suppress(OSError):
                    conn.shutdown(how)
        deadline = time.monotonic() + self.drain_timeout
        for state in connections.values():
            state.thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = len(self._connections)
        if left:
            log.error("stopped with %d request(s) unfinished after %gs", left, self.drain_timeout)

    # --- one connection -----------------------------------------------------------------

    def _peer_allowed(self, conn: socket.socket) -> bool:
        pid, uid, gid = _PEERCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid in self.allowed_uids or (self.group is not None and gid == self.group):
            return True
        log.warning("refused a peer: uid %d (pid %d) is not allowed", uid, pid)
        message = f"uid {uid} may not use this storage service"
        _send(conn, protocol.error(None, INVALID_REQUEST, message, "PermissionDenied"))
        return False

    def _connection(self, conn: socket.socket) -> None:
        try:
            # Only sends time out: a connection may rightly wait long for its next request.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(SEND_TIMEOUT))
            if self._peer_allowed(conn):
                with conn.makefile("rb") as reader:
                    self._converse(conn, reader)
        except OSError:
            pass  # the peer went away: nothing to answer
        except Exception:  # one connection's bug must not end the service
            log.exception("a connection ended with an unexpected error")
        finally:
            conn.close()
            with self._lock:
                self._connections.pop(conn, None)
                if len(self._connections) < self.max_connections:
                    self._full = False

    def _begin(self, conn: socket.socket) -> bool:
        """Mark a request of ``conn`` under way; False if the service is closing it."""
        with self._lock:
            state = self._connections.get(conn)
            if state is None or state.closing:
                return False
            state.busy = True
            return True

    def _end(self, conn: socket.socket) -> None:
        with self._lock:
            state = self._connections.get(conn)
            if state is not None:
                state.busy = False

    def _converse(self, conn: socket.socket, reader: BinaryIO) -> None:
        greeted = False
        while True:
            line = reader.readline(MAX_LINE + 1)
            if not line or not self._begin(conn):
                return
            try:
                next_state = self._handle(conn, line, greeted)
            finally:
                self._end(conn)
            if next_state is None:
                return
            greeted = next_state

    def _handle(self, conn: socket.socket, line: bytes, greeted: bool) -> bool | None:
        """Answer one request line: whether the conversation is greeted from now on, or
        None when the connection is to end."""
        if len(line) > MAX_LINE:
            log.warning("refused a request longer than %d bytes", MAX_LINE)
            message = f"request longer than {MAX_LINE} bytes; closing the connection"
            _send(conn, protocol.error(None, INVALID_REQUEST, message))
            return None
        if not line.strip():
            return greeted
        try:
            request = protocol.decode_request(line)
        except RequestError as exc:
            _send(conn, protocol.error(exc.request_id, exc.code, exc.message))
            return greeted
        except ProtocolError as exc:
            log.warning("a malformed request: %s", exc.message)
            _send(conn, protocol.error(None, exc.code, exc.message))
            return greeted
        if request.method == endpoint.HELLO:
            return True if self._hello(conn, request) else None
        if not greeted:
            message = f"the first request must be hello (this service speaks {PROTOCOL_VERSION})"
            _send(conn, protocol.error(request.id, INVALID_REQUEST, message))
            return None
        if request.method == WATCH:
            # A stream ends with its connection.
            return None if self._watch(conn, request) else greeted
        _send(conn, self._answer(request))
        return greeted

    def _hello(self, conn: socket.socket, request: Request) -> bool:
        spoken = request.params.get("protocol")
        if spoken != PROTOCOL_VERSION or isinstance(spoken, bool):
            said = spoken if isinstance(spoken, int) else json.dumps(spoken)
            message = (
                f"plugin speaks protocol {said}, this service speaks {PROTOCOL_VERSION}"
                if spoken is not None
                else f"hello without a protocol version; this service speaks {PROTOCOL_VERSION}"
            )
            log.warning("refused a client: %s", message)
            _send(conn, protocol.error(request.id, INVALID_REQUEST, message))
            return False
        reply = {"protocol": PROTOCOL_VERSION, "service": self.name, "backends": self._backends()}
        _send(conn, protocol.result(request.id, reply))
        return True

    def _backends(self) -> dict[str, str]:
        """The name users and clients come back with, per group (when one backend serves it)."""
        return {
            group: next(iter(names))
            for group, names in self.host.loader.backends.items()
            if len(names) == 1
        }

    def _answer(self, request: Request) -> bytes:
        try:
            value = answer(self.host, request.method, request.params)
            encoded = protocol.result(request.id, value)
        except ProtocolError as exc:
            reply = protocol.error(request.id, exc.code, exc.message, exc.error_class)
        except OmejdnPgError as exc:
            log.warning("%s failed: %s: %s", request.method, type(exc).__name__, exc)
            reply = protocol.error(request.id, STORAGE_ERROR, str(exc), type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - answered, never a dead connection
            # Not the message: an unexpected error's text is not vetted for secrets.
            log.error("%s failed: unexpected %s", request.method, type(exc).__name__)
            message = f"internal error ({type(exc).__name__}); see the service's log"
            reply = protocol.error(request.id, INTERNAL_ERROR, message, type(exc).__name__)
        else:
            with self._lock:
                self.served += 1
            return encoded
        with self._lock:
            self.failed += 1
        return reply

    def _watch(self, conn: socket.socket, request: Request) -> bool:
        """Stream changes until the stream ends (True), or answer why not (False)."""
        postgres = self.host.postgres
        cache = postgres.cache if postgres is not None else None
        if cache is None:
            refusal: OmejdnPgError = ConfigurationError(
                "the service runs without a read cache (cache: false): nothing to watch, "
                "keep nothing"
            )
        elif not cache.serving:
            refusal = StorageUnavailable(
                "the service's read cache is not serving (no heartbeat from its listener); "
                "keep nothing and ask again later"
            )
        else:
            _send(conn, protocol.result(request.id, {"watching": True}))
            # Nothing is under way while it streams: a stop closes it at once.
            self._end(conn)

            def send(method: str, params: dict[str, Any]) -> None:
                _send(conn, protocol.notification(method, params))

            why = watch.stream(cache, send, self.stopping, self.interval)
            log.debug("a watch stream ended: %s", why)
            return True
        message = str(refusal)
        _send(conn, protocol.error(request.id, STORAGE_ERROR, message, type(refusal).__name__))
        return False


def _send(conn: socket.socket, data: bytes) -> None:
    conn.sendall(data)


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1_000_000))


def install_stop_signals(service: Service) -> None:
    """SIGTERM and SIGINT stop ``service`` (again while it drains: no harm), whichever
    thread the kernel delivers them to."""

    def handler(_signum: int, _frame: object) -> None:
        if not service.stopping.is_set():
            # Should a stop ever outlive its bound, the log shows where each thread is
            # (names and lines only, never a value).
            faulthandler.dump_traceback_later(service.drain_timeout + 5)
        service.stop()

    signal.set_wakeup_fd(service.wake_fd, warn_on_full_buffer=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
