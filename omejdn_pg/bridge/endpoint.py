"""The service's socket file: made with the right mode, a stale one replaced, removed when done.

A socket file outlives a crashed service. Whether one is stale is decided by
connecting to it: nobody accepting means stale, and it is replaced; a live one
is refused, so two services never share a path (the second would otherwise
take it over silently and the first would serve nobody). The same probe, with
a ``hello``, is ``omejdn-pg serve --check``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
from pathlib import Path

from omejdn_pg.bridge import protocol
from omejdn_pg.bridge.protocol import MAX_LINE, PROTOCOL_VERSION
from omejdn_pg.errors import OmejdnPgError

log = logging.getLogger("omejdn_pg.bridge.service")
"""The service's logger: these lines are the service's."""
HELLO = "hello"


class ServiceError(OmejdnPgError):
    """The service cannot start (the socket path is taken, not a socket, not writable)."""


def service_name() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"omejdn-pg {version('omejdn-pg')}"
    except PackageNotFoundError:  # pragma: no cover - run from a source tree never installed
        return "omejdn-pg"


def answers_at(path: str, timeout: float = 2.0) -> bool:
    """Whether something accepts connections at ``path`` (a live service, not a stale file)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind(path: str, group: int | None) -> tuple[socket.socket, tuple[int, int]]:
    """A listening socket at ``path`` (mode 0600, or 0660 owned by ``group``) and the file's
    identity; a stale socket there is replaced, a live one or another file refused."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    if found is not None:
        if not stat.S_ISSOCK(found.st_mode):
            raise ServiceError(f"{path} exists and is not a socket; not replacing it")
        if answers_at(path):
            raise ServiceError(f"another service answers at {path}")
        log.info("removing the stale socket %s (nothing answers there)", path)
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The mode is right from the start: no moment where others could connect.
    old_umask = os.umask(0o177)
    try:
        listener.bind(path)
    except OSError as exc:
        listener.close()
        raise ServiceError(f"cannot create the socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    if group is not None:
        os.chown(path, -1, group)
        os.chmod(path, 0o660)
    listener.listen(128)
    listener.setblocking(False)
    made = os.lstat(path)
    return listener, (made.st_dev, made.st_ino)


def notify(state: str) -> None:
    """Tell systemd ``state`` (``READY=1``, ``STOPPING=1``) when it asked to be told
    (``$NOTIFY_SOCKET``, ``Type=notify``); nothing otherwise, and never an error: a
    notice that cannot be sent must not stop the service."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notice:
            notice.connect(address)
            notice.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", state, exc.strerror or exc)


def remove(path: str, identity: tuple[int, int] | None) -> None:
    """Remove the socket at ``path`` if it is still the one made (a successor may own it)."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if (found.st_dev, found.st_ino) == identity:
        os.unlink(path)


def check(path: str, timeout: float = 5.0) -> str:
    """Say hello at ``path``; the service's name and protocol, or :class:`ServiceError`."""
    if not Path(path).exists():
        raise ServiceError(f"no socket at {path}")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    try:
        try:
            conn.connect(path)
        except OSError as exc:
            reason = "nothing answers" if exc.errno == errno.ECONNREFUSED else exc.strerror
            raise ServiceError(f"{path}: {reason}") from None
        params = {"protocol": PROTOCOL_VERSION, "client": f"{service_name()} check"}
        try:
            conn.sendall(protocol.request(1, HELLO, params))
            with conn.makefile("rb") as reader:
                line = reader.readline(MAX_LINE)
        except OSError as exc:
            raise ServiceError(f"{path}: no answer to hello ({exc.strerror or exc})") from None
    finally:
        conn.close()
    try:
        reply = json.loads(line)
    except ValueError:
        raise ServiceError(f"{path}: the answer to hello is not JSON") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("result"), dict):
        error = reply.get("error") if isinstance(reply, dict) else None
        said = error.get("message") if isinstance(error, dict) else "no result"
        raise ServiceError(f"{path}: hello refused: {said}")
    result = reply["result"]
    return f"{result.get('service')} (protocol {result.get('protocol')})"
