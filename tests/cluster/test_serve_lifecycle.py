"""``omejdn-pg serve`` as a process: concurrency, stopping, its socket file, who may
connect, ``--check``, and what its log says (never a secret)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres.cache.listener import LISTENER_APPLICATION_NAME
from omejdn_pg.sealing import generate_secret, sealed_by
from omejdn_pg.settings.connection import ConnectionSettings
from tests import secrets
from tests.cluster.bridge_client import BridgeClient, BridgeError, Service
from tests.kits.commands import omejdn_pg, one_error_line
from tests.kits.plugins import plugin_file
from tests.kits.witness import PlainSQL

HASH = "$2b$04$97nGfbT5aTJG0osbDpneLe7ChbV0JL.KlPMKG.wK87UVnGMSmyoeu"  # "right-password"
SLOW = 1.5
"""Seconds a test holds a row lock, so the request waiting on it is the slow one."""
TIMEOUTS = (
    "      lock_timeout: 30s\n"
    "      statement_timeout: 30s\n"
    "      pool: {size: 20, max_overflow: 10}\n"
    "      cache: {max_staleness: 0.5}\n"
)


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory anyone may enter (the refused-peer test connects as another uid)."""
    path = Path(tempfile.mkdtemp(prefix="omejdn-pg-bridge-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for child in path.iterdir():
            child.unlink()
        path.rmdir()


@pytest.fixture
def config(database: ConnectionSettings, tmp_path: Path) -> Path:
    return plugin_file(
        tmp_path / "plugins.yml",
        database,
        bcrypt_rounds=5,
        backend=TIMEOUTS,
        postgres_by_default=False,
    )


def start(socket_dir: Path, config: Path, *args: str) -> Service:
    return Service(socket_dir / "omejdn-pg.sock", config, *args).start()


def seed(path: str | Path, users: int = 0) -> None:
    with BridgeClient(path) as client:
        client.call("CONFIGURATION_STORE", {"section": "omejdn", "data": {"issuer": "x"}})
        client.call("CLIENT_CREATE", {"client": {"client_id": "portal"}, "client_backend": None})
        for n in range(users):
            user = {"username": f"u{n}", "password": HASH, "attributes": {}}
            client.call("USER_CREATE", {"user": user, "user_backend": None})


def update(path: str | Path, username: str, value: int) -> Any:
    with BridgeClient(path) as client:
        user = {"username": username, "password": HASH, "attributes": {"v": value}}
        return client.call("USER_UPDATE", {"user": user})


def waiting_on_locks(database: ConnectionSettings) -> int:
    return int(
        PlainSQL(database).value(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        )
    )


def until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sixteen_slow_requests_wait_together_and_reads_pass_them(
    database: ConnectionSettings, socket_dir: Path, config: Path
) -> None:
    service = start(socket_dir, config)
    try:
        seed(service.path, users=16)
        results: list[Any] = [None] * 16
        with psycopg.connect(database.conninfo()) as locker:
            locker.execute("SELECT * FROM users FOR UPDATE")
            began = time.monotonic()

            def work(n: int) -> None:
                results[n] = update(service.path, f"u{n}", n) is None

            threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
            for thread in threads:
                thread.start()
            until(lambda: waiting_on_locks(database) == 16)
            # All sixteen wait on PostgreSQL at once; reads on other connections go by.
            with BridgeClient(service.path) as reader:
                read_began = time.monotonic()
                for _ in range(50):
                    assert reader.call("CONFIGURATION_LOAD", {"section": "omejdn"}) == {
                        "issuer": "x"
                    }
                    assert reader.call("CLIENT_GET", {"client_id": "portal"}) is not None
                reads = time.monotonic() - read_began
            time.sleep(max(0.0, SLOW - (time.monotonic() - began)))
            locker.commit()
        for thread in threads:
            thread.join(30)
        total = time.monotonic() - began
        assert results == [True] * 16, results
        assert reads < SLOW, reads
        # One after the other would take 16 lock waits; together they take one.
        assert total < SLOW + 3, total
        assert (
            PlainSQL(database).value(
                "SELECT count(*) FROM attributes WHERE type = 'user' AND key = 'v'"
            )
            == 16
        )
    finally:
        assert service.stop() == 0


def test_sigterm_finishes_the_request_under_way_then_removes_the_socket(
    database: ConnectionSettings, socket_dir: Path, config: Path
) -> None:
    service = start(socket_dir, config)
    seed(service.path, users=1)
    answer: list[Any] = []
    with psycopg.connect(database.conninfo()) as locker:
        locker.execute("SELECT * FROM users FOR UPDATE")
        thread = threading.Thread(target=lambda: answer.append(update(service.path, "u0", 7)))
        thread.start()
        until(lambda: waiting_on_locks(database) == 1)
        idle = BridgeClient(service.path)  # an idle connection must not hold the stop up
        service.process.terminate()
        until(lambda: not os.path.exists(service.path))
        assert service.process.poll() is None  # still finishing the request
        locker.commit()
    thread.join(30)
    assert answer == [None]
    assert service.process.wait(30) == 0
    service.stop()
    with pytest.raises(EOFError):
        idle.message()
    idle.close()
    assert PlainSQL(database).rows(
        "SELECT value FROM attributes WHERE identifier = 'u0' AND key = 'v'"
    ) == [(7,)]
    log = service.log()
    assert "serving at" in log
    assert "stopped; answered 4 event(s), 0 with an error" in log


def test_a_stale_socket_is_replaced_a_live_one_refused_and_check_tells_which(
    socket_dir: Path, config: Path
) -> None:
    path = socket_dir / "omejdn-pg.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # as after a crash: the file stays, nobody listens
    refused = omejdn_pg("serve", "--socket", str(path), "--check")
    assert f"{path}: nothing answers" in one_error_line(refused)
    service = start(socket_dir, config)
    try:
        assert "removing the stale socket" in service.log()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        checked = omejdn_pg("serve", "--socket", str(path), "--check")
        assert checked.returncode == 0, checked.stderr
        assert "answers at" in checked.stderr
        second = omejdn_pg("serve", "--socket", str(path), "--config", str(config))
        assert one_error_line(second) == f"error: another service answers at {path}"
        with BridgeClient(str(path)) as client:
            assert client.call("USER_GET_ALL") == []
    finally:
        assert service.stop() == 0
    assert not path.exists()
    gone = omejdn_pg("serve", "--socket", str(path), "--check")
    assert f"no socket at {path}" in one_error_line(gone)
    path.write_text("not a socket")
    taken = omejdn_pg("serve", "--socket", str(path), "--config", str(config))
    assert "exists and is not a socket" in one_error_line(taken)


def connect_as(path: str | Path, uid: int, gid: int, groups: list[int]) -> bytes:
    """What the service says to a client running as ``uid`` (a forked child)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(10)
            conn.connect(str(path))
            hello = b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1}}\n'
            # A refused peer is told so at once and closed: its hello may meet a closed
            # socket, while the refusal is still there to read.
            with contextlib.suppress(BrokenPipeError):
                conn.sendall(hello)
            os.write(write_end, conn.makefile("rb").readline())
        except BaseException as exc:  # reported to the parent
            os.write(write_end, f"child failed: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        said = reader.read()
    os.waitpid(pid, 0)
    return said


def test_a_peer_of_another_uid_is_refused_unless_allowed(
    database: ConnectionSettings, socket_dir: Path, config: Path, tmp_path: Path
) -> None:
    shared_gid = 54321  # the socket's group; the peer is in it only as a supplementary group
    service = start(socket_dir, config, "--group", str(shared_gid))
    try:
        path = service.path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        assert os.stat(path).st_gid == shared_gid
        said = connect_as(path, 65534, 65534, [shared_gid])
        assert b'"PermissionDenied"' in said, said
        assert b"uid 65534 may not use this storage service" in said
        assert "refused a peer: uid 65534" in service.log()
    finally:
        assert service.stop() == 0
    allowed = start(socket_dir, config, "--group", str(shared_gid), "--allow-uid", "65534")
    try:
        said = connect_as(allowed.path, 65534, 65534, [shared_gid])
        assert b'"result"' in said, said
        # A peer whose own gid is the socket's group is admitted too.
        said = connect_as(allowed.path, 65533, shared_gid, [])
        assert b'"result"' in said, said
    finally:
        assert allowed.stop() == 0


def test_the_log_says_starts_stops_and_errors_but_never_a_secret(
    socket_dir: Path, config: Path
) -> None:
    service = start(socket_dir, config, "-v", "-v")
    try:
        with BridgeClient(service.path) as client:
            user = {"username": "alice", "password": HASH, "attributes": {}}
            client.call("USER_CREATE", {"user": user, "user_backend": None})
            check = {"user": {"username": "alice"}, "password": "right-password"}
            assert client.call("USER_AUTHENTICATION_PASSWORD_VERIFY", check) is True
            change = {"user": {"username": "alice"}, "password": "a-new-password"}
            client.call("USER_AUTHENTICATION_PASSWORD_CHANGE", change)
            with pytest.raises(BridgeError):
                client.call("USER_CREATE", {"user": user, "user_backend": None})
            jwks = KeySet([generate_key("RS256")]).to_jwks(private=True)
            target = {"target_type": "omejdn", "target": "omejdn"}
            client.call("KEYS_STORE", {**target, "jwks": jwks})
            private = client.call("KEYS_LOAD", target)["keys"][0]["d"]
            client.send_line(b"{not json}\n")
            with pytest.raises(BridgeError):
                client.reply()
    finally:
        assert service.stop() == 0
    log = service.log()
    assert "AlreadyExists" in log
    assert "malformed request" in log
    for secret in ("right-password", "a-new-password", HASH, private, "PRIVATE KEY", '"d"'):
        assert secret not in log


def test_watch_tells_changes_of_this_and_other_writers_and_keeps_alive(
    database: ConnectionSettings, socket_dir: Path, config: Path
) -> None:
    service = start(socket_dir, config, "--interval", "0.2")
    try:
        with BridgeClient(service.path) as watcher, BridgeClient(service.path) as writer:
            assert watcher.call("watch") == {"watching": True}
            began = time.monotonic()
            assert watcher.message() == {"jsonrpc": "2.0", "method": "alive", "params": {}}
            assert time.monotonic() - began < 1.0
            writer.call("CONFIGURATION_STORE", {"section": "omejdn", "data": {"a": 1}})
            assert changed_groups(watcher) == ["config"]  # its own write: before it returned
            # Another writer, behind the package's back: the users trigger announces it.
            PlainSQL(database).execute("INSERT INTO users (username) VALUES ('by-hand')")
            hears(watcher, "user")
    finally:
        assert service.stop() == 0


def changed_groups(watcher: BridgeClient, timeout: float = 3) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = watcher.message()
        if message["method"] == "changed":
            groups: list[str] = message["params"]["groups"]
            return groups
    raise AssertionError("no 'changed' within the timeout")


def hears(watcher: BridgeClient, group: str, timeout: float = 3) -> None:
    """Wait for a "changed" naming ``group`` (the notices of earlier writes may come first)."""
    deadline = time.monotonic() + timeout
    while group not in changed_groups(watcher, timeout):
        assert time.monotonic() < deadline, f"no 'changed' for {group} within {timeout}s"


def test_watch_is_refused_without_a_read_cache(
    database: ConnectionSettings, socket_dir: Path, tmp_path: Path
) -> None:
    config = plugin_file(
        tmp_path / "plugins.yml",
        database,
        bcrypt_rounds=5,
        cache="false",
        postgres_by_default=False,
    )
    service = start(socket_dir, config)
    try:
        with BridgeClient(service.path) as client:
            with pytest.raises(BridgeError) as raised:
                client.call("watch")
            assert raised.value.error_class == "ConfigurationError"
            assert "keep nothing" in raised.value.message
    finally:
        assert service.stop() == 0


def test_watch_ends_when_the_read_cache_loses_its_listener(
    database: ConnectionSettings, socket_dir: Path, config: Path
) -> None:
    service = start(socket_dir, config)
    try:
        with BridgeClient(service.path) as watcher:
            assert watcher.call("watch") == {"watching": True}
            killed = PlainSQL(database).rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (LISTENER_APPLICATION_NAME,),
            )
            assert killed == [(True,)]
            # Everything is dropped, and the stream ends: a client keeps nothing from now on.
            hears(watcher, "keys")
            with pytest.raises(EOFError):
                drain(watcher)
        # Once the listener is back, a new stream may start.
        with BridgeClient(service.path) as again:
            answers: list[Any] = []
            until(
                lambda: answers.append(watch_answer(again)) or answers[-1] != "StorageUnavailable"
            )
            assert answers[-1] == {"watching": True}
    finally:
        assert service.stop() == 0


def drain(watcher: BridgeClient) -> None:
    while True:
        watcher.message()


def watch_answer(client: BridgeClient) -> Any:
    """The answer to ``watch``, or the class of the error it got (the connection stays)."""
    try:
        return client.call("watch")
    except BridgeError as exc:
        return exc.error_class


def test_configured_as_every_command_key_encryption_applies_through_the_socket(
    database: ConnectionSettings, socket_dir: Path, tmp_path: Path
) -> None:
    """``$OMEJDN_PLUGINS`` names the plugin file, which seals private keys with a
    key-encryption key from the environment: what KEYS_STORE sends over the socket is
    stored sealed, KEYS_LOAD opens it, and the key-encryption key is never said."""
    kek = secrets.watch(generate_secret())
    extra = "      key_encryption: [{id: kek-1, env: OMEJDN_PG_TEST_KEK}]\n"
    config = plugin_file(
        tmp_path / "plugins.yml",
        database,
        bcrypt_rounds=5,
        backend=extra,
        postgres_by_default=False,
    )
    env = {"OMEJDN_PLUGINS": str(config), "OMEJDN_PG_TEST_KEK": kek}
    service = Service(socket_dir / "omejdn-pg.sock", None, env=env).start()
    try:
        signer = generate_key("ES256")
        target = {"target_type": "omejdn", "target": "omejdn"}
        with BridgeClient(service.path) as client:
            client.call("KEYS_STORE", {**target, "jwks": KeySet([signer]).to_jwks(private=True)})
            loaded = client.call("KEYS_LOAD", target)
        assert loaded == KeySet([signer]).to_jwks(private=True)
        assert sealed_by(PlainSQL(database).value("SELECT value FROM keys")) == "kek-1"
    finally:
        assert service.stop() == 0
    assert kek not in service.log()


def test_an_unknown_group_is_a_usage_error(socket_dir: Path, config: Path) -> None:
    path = socket_dir / "omejdn-pg.sock"
    result = omejdn_pg("serve", "--socket", str(path), "--group", "no-such-group-here")
    assert "no group named 'no-such-group-here'" in one_error_line(result, code=2)
    assert not path.exists()


def _signal_a_thread_other_than_main(pid: int, signum: int) -> None:
    """Deliver ``signum`` to one of ``pid``'s other threads, as the kernel may choose to."""
    others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
    assert others, "the service runs no thread besides its main one"
    libc = ctypes.CDLL(None, use_errno=True)
    tgkill = {"x86_64": 234, "aarch64": 131}[platform.machine()]
    assert libc.syscall(tgkill, pid, others[0], signum) == 0, os.strerror(ctypes.get_errno())


def test_a_stop_closes_idle_connections_at_once_whichever_thread_gets_the_signal(
    socket_dir: Path, config: Path
) -> None:
    """A client that never closes (one greeted and idle, one that never said hello) does
    not hold up a stop, nor does a signal the kernel hands to a thread other than the
    one waiting for connections."""
    service = start(socket_dir, config)
    with BridgeClient(service.path) as idle, BridgeClient(service.path, hello=False) as mute:
        seed(service.path)
        started = time.monotonic()
        _signal_a_thread_other_than_main(service.process.pid, signal.SIGTERM)
        assert service.stop(timeout=10) == 0, service.log()
        assert time.monotonic() - started < 5
        for client in (idle, mute):
            with pytest.raises((EOFError, ConnectionResetError)):
                client.message()
    assert not os.path.exists(service.path)
    assert "stopped; answered" in service.log()


def test_connections_over_the_bound_get_an_error_and_are_closed(
    socket_dir: Path, config: Path
) -> None:
    service = start(socket_dir, config, "--max-connections", "2")
    try:
        first, second = BridgeClient(service.path), BridgeClient(service.path)
        for _ in range(2):
            with BridgeClient(service.path, hello=False) as over:
                refusal = over.message()
                assert refusal["error"]["data"]["class"] == "StorageUnavailable"
                assert "--max-connections" in refusal["error"]["message"]
                with pytest.raises(EOFError):
                    over.message()
        # The two served go on being served.
        assert first.call("CONFIGURATION_LOAD", {"section": "omejdn"}) is None
        second.close()
        deadline = time.monotonic() + 5
        while True:  # its thread ends a moment after the close
            with BridgeClient(service.path, hello=False) as later:
                later.send_line(
                    b'{"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"protocol": 1}}\n'
                )
                if "result" in later.message():
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.close()
    finally:
        assert service.stop() == 0
    assert service.log().count("refusing connections") == 1


def test_systemd_is_told_when_the_service_is_ready_and_when_it_stops(
    socket_dir: Path, config: Path, tmp_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        systemd.settimeout(60)
        service = Service(
            socket_dir / "omejdn-pg.sock", config, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}
        ).launch()
        try:
            assert systemd.recv(100) == b"READY=1"
            # Ready means ready: the socket answers a hello now.
            with BridgeClient(service.path) as client:
                assert client.hello["protocol"] == 1
        finally:
            service.process.send_signal(signal.SIGTERM)
            assert systemd.recv(100) == b"STOPPING=1"
            assert service.stop() == 0
