"""The embedded default: no connection configured, so ``omejdn-pg`` runs its own PostgreSQL.

Each test uses a data folder of its own (``OMEJDN_PG_DATA``) and stops its
server afterwards, whatever happened.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from omejdn_pg.cli import embedded
from omejdn_pg.errors import OmejdnPgError, StorageUnavailable
from omejdn_pg.sealing import generate_secret
from tests import secrets
from tests.kits import commands
from tests.kits.commands import ok


def omejdn_pg(*args: str, data: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``data`` as OMEJDN_PG_DATA, in the folder that holds it."""
    return commands.omejdn_pg(
        *args, input=input, env={"OMEJDN_PG_DATA": str(data)}, cwd=data.parent
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data folder outside pytest's temporary root.

    pytest resets its root (``/tmp/pytest-of-<user>``) to mode 0700 at every
    session start; under root, pgserver runs PostgreSQL as another user, which
    then loses access to its own data if another pytest session starts meanwhile.
    """
    base = Path(tempfile.mkdtemp(prefix="omejdn-pg-embedded-test-"))
    path = base / "pgdata"
    try:
        yield path
    finally:
        embedded.stop(path)
        shutil.rmtree(base, ignore_errors=True)


def not_running(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``db status`` of a stopped server: exit status 3 (LSB's "not running")."""
    assert result.returncode == 3, (result.returncode, result.stderr)
    return result


def test_db_lifecycle_and_default_connection(data_dir: Path) -> None:
    status = json.loads(not_running(omejdn_pg("db", "status", "--json", data=data_dir)).stdout)
    assert status == {"data_dir": str(data_dir), "running": False}
    assert "stopped" in not_running(omejdn_pg("db", "status", data=data_dir)).stdout

    started = ok(omejdn_pg("db", "start", data=data_dir))
    url = started.stdout.strip()
    assert url.startswith("postgresql://postgres@/omejdn?host=")
    assert f"started the embedded PostgreSQL in {data_dir}" in started.stderr

    status = json.loads(ok(omejdn_pg("db", "status", "--json", data=data_dir)).stdout)
    assert status["running"]
    assert status["url"] == url
    assert ok(omejdn_pg("db", "url", data=data_dir)).stdout.strip() == url
    again = ok(omejdn_pg("db", "start", data=data_dir))
    assert "already running" in again.stderr

    # No --url, no OMEJDN_PG_URL, no plugin file: the commands use the embedded server.
    migrated = ok(omejdn_pg("migrate", "upgrade", "-v", data=data_dir))
    assert "nothing to do" in migrated.stdout  # `db start` migrated it already
    assert f"using the embedded PostgreSQL in {data_dir}" in migrated.stderr
    added = ok(omejdn_pg("users", "add", "ivan", "--password-stdin", input="pw\n", data=data_dir))
    assert "embedded PostgreSQL" not in added.stderr  # the notice comes with -v only
    users = json.loads(ok(omejdn_pg("users", "list", "--json", data=data_dir)).stdout)
    assert [u["username"] for u in users] == ["ivan"]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT username FROM users").fetchall() == [("ivan",)]

    stopped = ok(omejdn_pg("db", "stop", data=data_dir))
    assert "stopped" in stopped.stderr
    status = json.loads(not_running(omejdn_pg("db", "status", "--json", data=data_dir)).stdout)
    assert status["running"] is False
    assert "was not running" in ok(omejdn_pg("db", "stop", data=data_dir)).stderr


def test_commands_start_and_migrate_it_on_demand(data_dir: Path) -> None:
    result = ok(omejdn_pg("check", "--json", data=data_dir))
    report = json.loads(result.stdout)
    assert report["ok"]
    assert report["source"] == f"embedded PostgreSQL in {data_dir}"
    assert "started the embedded PostgreSQL" in result.stderr
    assert "migrated the embedded database" in result.stderr
    quiet = ok(omejdn_pg("-q", "users", "list", "--json", data=data_dir))
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout) == []


def test_default_data_folder_is_local(tmp_path: Path) -> None:
    assert embedded.data_dir({}) == Path.cwd() / ".omejdn-pg" / "pgdata"
    assert embedded.data_dir({"OMEJDN_PG_DATA": str(tmp_path)}) == tmp_path


def test_missing_pgserver_is_one_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pgserver", None)  # makes `import pgserver` fail
    with pytest.raises(OmejdnPgError, match=r"pip install 'omejdn-pg\[embedded\]'"):
        embedded.start(tmp_path / "pgdata")
    assert embedded.status(tmp_path / "pgdata").running is False


def test_reusing_a_running_server_opens_no_connection(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, started = embedded.start(data_dir)
    assert started
    with psycopg.connect(embedded.url(first.connection())) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (embedded.DATABASE,)

    def no_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("reusing a running server must not connect")

    monkeypatch.setattr(psycopg, "connect", no_connection)
    again, started = embedded.start(data_dir)

    assert not started
    assert again == first


def test_a_missing_database_on_a_reused_server_is_created_on_first_use(data_dir: Path) -> None:
    status, _ = embedded.start(data_dir)
    admin = status.connection(dbname=embedded.SUPERUSER).conninfo()

    def drop_database() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {embedded.DATABASE}")

    drop_database()
    current = ok(omejdn_pg("migrate", "current", data=data_dir))
    assert current.stdout == "\n"  # created, never migrated
    assert "no omejdn_pg schema yet" in current.stderr
    drop_database()
    listed = ok(omejdn_pg("users", "list", "--json", data=data_dir))
    assert json.loads(listed.stdout) == []
    assert "migrated the embedded database" in listed.stderr


def test_with_database_retries_only_when_it_created_the_database(data_dir: Path) -> None:
    status, _ = embedded.start(data_dir)
    calls: list[int] = []

    def unavailable() -> None:
        calls.append(1)
        raise StorageUnavailable("the first error")

    # The database exists: the failure is something else, raised as it was, not retried.
    with pytest.raises(StorageUnavailable, match="the first error"):
        embedded.with_database(status, unavailable)
    assert calls == [1]
    # The server does not answer either: still the first error.
    gone = dataclasses.replace(status, socket_dir=data_dir / "nowhere")
    with pytest.raises(StorageUnavailable, match="the first error"):
        embedded.with_database(gone, unavailable)
    assert calls == [1, 1]


def test_the_server_inherits_no_secret_of_the_cli(data_dir: Path) -> None:
    """It outlives the command, as another account under root: its environment
    (``/proc/<pid>/environ``) must hold no KEK, no PGPASSWORD, no URL with a password."""
    kek = secrets.watch(generate_secret())
    password = secrets.watch("Pg-Pass-" + generate_secret()[:8])
    env = {
        "OMEJDN_PG_DATA": str(data_dir),
        "OMEJDN_PG_KEK_TEST": kek,
        "PGPASSWORD": password,
        "OMEJDN_PG_SECRET_HINT": f"postgresql://u:{password}@db/x",
    }
    ok(commands.omejdn_pg("db", "start", env=env, cwd=data_dir.parent))
    status = embedded.status(data_dir)
    assert status.pid is not None
    pids = [status.pid, *children_of(status.pid)]
    assert len(pids) > 1  # the postmaster and its background workers
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
        assert kek not in environ, pid
        assert password not in environ, pid
        assert "PGPASSWORD" not in environ, pid
        assert "OMEJDN_PG_KEK_TEST" not in environ, pid
    # The CLI's own environment is whole again after the start (it still connects).
    ok(commands.omejdn_pg("users", "list", env=env, cwd=data_dir.parent))


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found
