"""Omejdn's Ruby plugin when the storage service fails: it raises, bounded in time, never nil.

A nil from the plugin is an answer to Omejdn's core ("no such client", "no
signing key yet: make one"), so every failure must raise: the service down or
killed in the middle of a call (and then nothing half-written), a service that
never answers (bounded by the plugin's timeout; a stub socket that reads and
never writes stands in for it), a malformed reply, a peer uid the service
refuses. And 16 Ruby threads at once do not queue behind one another.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from omejdn_pg.settings.connection import ConnectionSettings
from tests.cluster.bridge_client import Service, service_for
from tests.cluster.ruby.harness import RubyDriver, RubyError, install, omejdn_plugins
from tests.kits.witness import PlainSQL

HASH = "$2b$04$97nGfbT5aTJG0osbDpneLe7ChbV0JL.KlPMKG.wK87UVnGMSmyoeu"  # "right-password"
ALICE = {"username": "alice", "password": HASH, "attributes": {}, "backend": "yaml"}


# --- a stub service: the protocol's framing, with whatever misbehaviour a test needs ---------


Answer = Callable[[dict[str, object]], bytes | None]


@contextlib.contextmanager
def stub(path: Path, answer: Answer) -> Iterator[list[float]]:
    """A Unix socket server answering hello properly and every other request with
    ``answer(request)`` (None: never answer). Each connection has a thread. Yields
    the times at which requests arrived."""
    arrivals: list[float] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    stopping = threading.Event()
    connections: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as lines:
            for line in lines:
                request = json.loads(line)
                if request["method"] == "hello":
                    result = {"protocol": 1, "service": "stub"}
                    reply = {"jsonrpc": "2.0", "id": request["id"], "result": result}
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                    continue
                arrivals.append(time.monotonic())
                data = answer(request)
                if data is not None:
                    conn.sendall(data)

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            connections.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield arrivals
    finally:
        stopping.set()
        server.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def reply(request: dict[str, object], result: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode() + b"\n"


def driver_for(tmp_path: Path, socket_path: Path, *, timeout: float = 5) -> RubyDriver:
    plugins = install(tmp_path / "omejdn")
    yml = omejdn_plugins(tmp_path / "omejdn.yml", socket_path, timeout=timeout)
    return RubyDriver(plugins, yml)


def raised(driver: RubyDriver, event: str, **locals_: object) -> tuple[RubyError, float]:
    started = time.monotonic()
    with pytest.raises(RubyError) as error:
        driver.fire(event, **locals_)
    return error.value, time.monotonic() - started


# --- no service ------------------------------------------------------------------------------


def test_without_the_service_every_event_raises(tmp_path: Path) -> None:
    with driver_for(tmp_path, tmp_path / "nobody-here.sock") as omejdn:
        for event, locals_ in [
            ("KEYS_LOAD", {"target_type": "omejdn", "target": "omejdn", "create": True}),
            ("CLIENT_GET", {"client_id": "app"}),
            ("CONFIGURATION_LOAD", {"section": "omejdn", "fallback": {}}),
            ("USER_AUTHENTICATION_PASSWORD_VERIFY", {"user": ALICE, "password": "x"}),
            ("USER_CREATE", {"user": ALICE, "user_backend": None}),
        ]:
            error, _ = raised(omejdn, event, **locals_)
            assert error.error_class == "OmejdnPg::Unavailable", event
            assert "nobody-here.sock cannot be reached" in error.message


# --- the real service, killed --------------------------------------------------------------


@pytest.fixture
def slow_hashing_service(database: ConnectionSettings, tmp_path: Path) -> Iterator[Service]:
    """A service whose password changes hash at cost 15 (about a second or more)."""
    running = service_for(
        database, tmp_path, bcrypt_rounds=15, cache="{max_staleness: 0.5}"
    ).start()
    try:
        yield running
    finally:
        running.stop()


def test_a_service_killed_mid_call_raises_and_writes_nothing(
    slow_hashing_service: Service, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    service = slow_hashing_service
    with driver_for(tmp_path, service.path) as omejdn:
        omejdn.fire("USER_CREATE", user=ALICE, user_backend=None)
        omejdn.send(
            {
                "fire": "USER_AUTHENTICATION_PASSWORD_CHANGE",
                "locals": {"user": ALICE, "password": "a-new-password"},
            }
        )
        time.sleep(0.5)  # the service is hashing
        service.kill()
        answer = omejdn.receive()
        assert answer["error"]["class"] == "OmejdnPg::Unavailable", answer
        assert (
            "closed the connection during USER_AUTHENTICATION_PASSWORD_CHANGE"
            in (answer["error"]["message"])
        )
        assert "a-new-password" not in json.dumps(answer)
        assert plain_sql.value("SELECT password FROM users WHERE username = 'alice'") == HASH

        # Down: raises at once. Back: the same Ruby process carries on, on a new connection.
        error, _ = raised(omejdn, "USER_GET", username="alice")
        assert error.error_class == "OmejdnPg::Unavailable"
        service.path.unlink(missing_ok=True)
        service.start()
        assert omejdn.first("USER_GET", username="alice")["user"]["username"] == "alice"


def test_copies_kept_in_ruby_go_with_the_service(
    database: ConnectionSettings, tmp_path: Path
) -> None:
    service = service_for(database, tmp_path, cache="{max_staleness: 0.5}").start()
    try:
        with driver_for(tmp_path, service.path) as omejdn:
            omejdn.fire("CONFIGURATION_STORE", section="omejdn", data={"issuer": "https://x"})
            for _ in range(3):  # the watch stream comes up; the section is kept from then on
                assert omejdn.first("CONFIGURATION_LOAD", section="omejdn", fallback={})
                time.sleep(0.2)
            service.kill()
            time.sleep(0.3)
            error, _ = raised(omejdn, "CONFIGURATION_LOAD", section="omejdn", fallback={})
            assert error.error_class == "OmejdnPg::Unavailable"
    finally:
        service.stop()


# --- stubs: slow, malformed, concurrent --------------------------------------------------------


def test_a_service_that_never_answers_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with stub(path, lambda request: None), driver_for(tmp_path, path, timeout=0.5) as omejdn:
        for event, locals_ in [
            ("CLIENT_GET", {"client_id": "app"}),
            ("KEYS_LOAD", {"target_type": "omejdn", "target": "omejdn", "create": True}),
        ]:
            error, took = raised(omejdn, event, **locals_)
            assert error.error_class == "OmejdnPg::Unavailable"
            assert f"no answer to {event} within 0.5 s" in error.message
            assert 0.45 <= took < 2.0, took


def test_a_socket_that_never_says_hello_is_bounded_too(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)  # accepts (in the kernel) and never reads nor writes
    try:
        with driver_for(tmp_path, path, timeout=0.5) as omejdn:
            error, took = raised(omejdn, "USER_GET", username="alice")
            assert "no answer to hello within 0.5 s" in error.message
            assert took < 2.0
    finally:
        server.close()


@pytest.mark.parametrize(
    ("bad", "said"),
    [
        (b"this is not JSON\n", "malformed reply to CLIENT_GET (not JSON)"),
        (b"[1, 2]\n", "malformed reply to CLIENT_GET (not a JSON-RPC 2.0 object)"),
        (b'{"jsonrpc": "2.0", "id": 999, "result": null}\n', "carries id 999"),
        (b'{"jsonrpc": "2.0", "id": 2}\n', "neither result nor error"),
    ],
)
def test_a_malformed_reply_raises(tmp_path: Path, bad: bytes, said: str) -> None:
    path = tmp_path / "bad.sock"
    with stub(path, lambda request: bad), driver_for(tmp_path, path) as omejdn:
        error, _ = raised(omejdn, "CLIENT_GET", client_id="app")
        assert error.error_class == "OmejdnPg::Unavailable"
        assert said in error.message


def test_sixteen_threads_do_not_queue_behind_one_another(tmp_path: Path) -> None:
    path = tmp_path / "slow.sock"

    def slowly(request: dict[str, object]) -> bytes:
        time.sleep(0.4)
        return reply(request, None)

    with stub(path, slowly) as arrivals, driver_for(tmp_path, path) as omejdn:
        answer = omejdn.command(
            {"fire": "CLIENT_GET", "locals": {"client_id": "app"}, "threads": 16}
        )
        assert [r for r in answer["results"] if "error" in r] == []
        assert len(arrivals) == 16
        # One connection per thread: all 16 requests arrive at once, not 0.4 s apart.
        assert max(arrivals) - min(arrivals) < 0.3
        assert answer["seconds"] < 16 * 0.4 / 4


def test_sixteen_threads_on_the_real_service(
    database: ConnectionSettings, tmp_path: Path, plain_sql: PlainSQL
) -> None:
    service = service_for(database, tmp_path, cache="{max_staleness: 0.5}").start()
    try:
        with driver_for(tmp_path, service.path) as omejdn:
            user = {**ALICE, "username": "user{thread}"}
            created = omejdn.command(
                {
                    "fire": "USER_CREATE",
                    "locals": {"user": user, "user_backend": None},
                    "threads": 16,
                }
            )
            assert [r for r in created["results"] if "error" in r] == []
            read = omejdn.command(
                {
                    "fire": "USER_GET",
                    "locals": {"username": "user{thread}"},
                    "threads": 16,
                    "times": 20,
                }
            )
            for index, results in enumerate(read["results"]):
                assert {r["values"][0]["user"]["username"] for r in results} == {f"user{index}"}
        assert plain_sql.value("SELECT count(*) FROM users") == 16
    finally:
        assert service.stop() == 0, service.log()


# --- a peer the service refuses ----------------------------------------------------------------


def test_a_refused_peer_uid_raises(database: ConnectionSettings, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test runs a peer under another uid: it needs root (as CI runs)")
    # The socket's group may connect (0660), but the service allows peers by uid and
    # primary gid: `nobody`, in that group only as a supplementary one, is refused.
    group = grp.getgrnam("daemon").gr_gid
    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="omejdn-pg-peer-"))
    shared.chmod(0o755)
    service = service_for(
        database, shared, "--group", "daemon", cache="{max_staleness: 0.5}"
    ).start()

    def become_nobody() -> None:
        os.setgroups([group])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    try:
        plugins = install(shared / "omejdn")
        yml = omejdn_plugins(shared / "omejdn.yml", service.path)
        for path in [shared, *shared.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else path.stat().st_mode | 0o044)
        with RubyDriver(plugins, yml, preexec=become_nobody) as omejdn:
            error, _ = raised(omejdn, "USER_GET", username="alice")
        assert error.error_class == "OmejdnPg::ServiceError"
        assert error.remote_class == "PermissionDenied"
        assert f"refused a peer: uid {nobody.pw_uid}" in service.log()
    finally:
        service.stop()
        for path in sorted(shared.rglob("*"), reverse=True):
            path.unlink() if not path.is_dir() else path.rmdir()
        shared.rmdir()
