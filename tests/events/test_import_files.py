"""An import directory written by someone else: which files are read, how much, and what
a file may become.

Every refused file is named; nothing is written when one is refused (checked with
plain SQL). The CLI cases run the real command against the suite's PostgreSQL.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from omejdn_pg.errors import InvalidValue
from omejdn_pg.host.files import reading
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.yamlio import parse_yaml
from tests.kits.commands import ok, omejdn_pg, one_error_line

BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{','.join(['*' + previous] * 9)}]"
            for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)
"""Nine lines, 9**9 strings once expanded: what the report's 480-byte omejdn.yml held."""


@pytest.fixture
def url(database: ConnectionSettings) -> str:
    return database.conninfo()


def stored_sections(plain_sql: Any) -> list[str]:
    return [
        row[0]
        for row in plain_sql.rows(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'configuration\\_%' ORDER BY 1"
        )
    ]


def nothing_stored(plain_sql: Any) -> bool:
    return (
        plain_sql.value("SELECT count(*) FROM users") == 0
        and plain_sql.value("SELECT count(*) FROM clients") == 0
        and stored_sections(plain_sql) == []
    )


# --- 9: only regular files inside the directory --------------------------------------------


def test_a_section_linking_out_of_the_directory_is_refused_and_named(
    examples: Path, tmp_path: Path, host: Host, plain_sql: Any
) -> None:
    outside = tmp_path / "plugins.yml"
    outside.write_text("postgres_backend:\n  connection: postgresql://u:Secret-77@h/db\n")
    (examples / "config" / "webfinger.yml").unlink()
    (examples / "config" / "webfinger.yml").symlink_to(outside)

    with pytest.raises(InvalidValue) as caught:
        transfer.import_deployment(examples, host)

    assert "webfinger.yml: refused: a symbolic link that leads out of" in str(caught.value)
    assert "Secret-77" not in str(caught.value)
    assert nothing_stored(plain_sql)


def test_import_dry_run_does_not_print_a_linked_system_file(
    examples: Path, url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$not-to-be-printed:19000:0:99999:7:::\n")
    (examples / "config" / "omejdn.yml").unlink()
    (examples / "config" / "omejdn.yml").symlink_to(secret)

    result = omejdn_pg("--url", url, "import", str(examples), "--dry-run", "-v")

    line = one_error_line(result)
    assert "omejdn.yml: refused: a symbolic link that leads out of" in line
    assert "not-to-be-printed" not in result.stdout + result.stderr


def test_a_link_inside_the_directory_is_read(examples: Path, host: Host, plain_sql: Any) -> None:
    # How Kubernetes mounts a ConfigMap: the file links to a copy beside it.
    config = examples / "config"
    (config / "..data").mkdir()
    (config / "webfinger.yml").rename(config / "..data" / "webfinger.yml")
    (config / "webfinger.yml").symlink_to(Path("..data") / "webfinger.yml")

    transfer.import_deployment(examples, host)

    assert "configuration_webfinger" in stored_sections(plain_sql)


def test_a_fifo_is_refused_without_blocking(examples: Path, host: Host, plain_sql: Any) -> None:
    os.mkfifo(examples / "config" / "pipe.yml")
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            transfer.import_deployment(examples, host)
            outcome.append(None)
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        # Unblock the reader so the thread can end, then fail: the import hung.
        with open(examples / "config" / "pipe.yml", "w"):
            pass
        worker.join(10)
        pytest.fail("the import blocked on a FIFO")
    assert isinstance(outcome[0], InvalidValue), outcome
    assert "pipe.yml: refused: a FIFO, not a regular file" in str(outcome[0])
    assert nothing_stored(plain_sql)


def test_a_socket_as_a_key_file_is_refused(examples: Path, host: Host) -> None:
    folder = examples / "keys" / "omejdn"
    path = folder / "other.key"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        with pytest.raises(InvalidValue, match=r"other\.key: refused: a socket"):
            transfer.read_deployment(examples)


def test_a_link_to_a_device_is_refused_before_reading(examples: Path, host: Host) -> None:
    (examples / "config" / "zero.yml").symlink_to("/dev/zero")
    started = time.monotonic()
    with pytest.raises(InvalidValue, match=r"zero\.yml: refused: a symbolic link"):
        transfer.read_deployment(examples)
    assert time.monotonic() - started < 5


def test_a_device_is_refused_where_links_are_allowed(tmp_path: Path) -> None:
    # The default file plugins follow links (the operator placed them); still no device.
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "zero.yml").symlink_to("/dev/zero")
    with pytest.raises(InvalidValue, match=r"zero\.yml: refused: a device, not a regular file"):
        FileStore(tmp_path).read_section("zero")


def test_a_file_above_the_size_limit_is_refused(
    examples: Path, host: Host, plain_sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The examples' largest file, clients.yml, has 2,293 bytes.
    monkeypatch.setattr(reading, "SECTION_LIMIT", 3000)
    monkeypatch.setattr("omejdn_pg.host.files.store.SECTION_LIMIT", 3000)
    (examples / "config" / "big.yml").write_text("a: " + "x" * 4000 + "\n")
    with pytest.raises(InvalidValue, match=r"big\.yml: refused: 4004 bytes, more than 3000"):
        transfer.import_deployment(examples, host)
    assert nothing_stored(plain_sql)


def test_a_key_file_linking_out_of_the_directory_is_refused(
    examples: Path, tmp_path: Path, host: Host
) -> None:
    folder = examples / "keys" / "omejdn"
    victim = sorted(folder.glob("*.key"))[0]
    copy = tmp_path / "elsewhere.key"
    copy.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(copy)
    with pytest.raises(InvalidValue, match=rf"{victim.name}: refused: a symbolic link"):
        transfer.read_deployment(examples)


# --- 10: YAML aliases bounded ------------------------------------------------------------


def test_an_alias_bomb_is_refused_at_once_by_import(
    examples: Path, host: Host, plain_sql: Any
) -> None:
    assert len(BOMB) < 500
    (examples / "config" / "omejdn.yml").write_text(BOMB)
    started = time.monotonic()
    with pytest.raises(InvalidValue, match=r"omejdn\.yml: refused: its aliases make it more"):
        transfer.import_deployment(examples, host)
    assert time.monotonic() - started < 5
    assert nothing_stored(plain_sql)


def test_config_set_refuses_an_alias_bomb(url: str, plain_sql: Any) -> None:
    started = time.monotonic()
    result = omejdn_pg("--url", url, "config", "set", "bomb", input=BOMB)
    assert "refused: its aliases make it more" in one_error_line(result)
    assert time.monotonic() - started < 30
    assert stored_sections(plain_sql) == []


def test_an_alias_to_its_own_container_is_refused() -> None:
    with pytest.raises(InvalidValue, match=r"^loop\.yml: refused: an alias names a node that"):
        parse_yaml("a: &a [1, *a]\n", "loop.yml")


def test_ordinary_anchors_and_merges_still_load(examples: Path, host: Host, plain_sql: Any) -> None:
    text = (
        "defaults: &defaults {issuer: 'https://a&b.example', ttl: 3600}\n"
        "tokens:\n  <<: *defaults\n  ttl: 60\n"
        "ids: [*defaults, *defaults]\n"
    )
    assert parse_yaml(text, "x.yml") == yaml.safe_load(text)
    (examples / "config" / "anchors.yml").write_text(text)
    transfer.import_deployment(examples, host)
    assert (
        plain_sql.value("SELECT value->>'ttl' FROM configuration_anchors WHERE key = 'tokens'")
        == "60"
    )


# --- 11: unknown files reported, misnamed users and clients refused ------------------------


def test_a_misnamed_users_file_is_refused_not_stored_as_a_section(
    examples: Path, host: Host, plain_sql: Any
) -> None:
    config = examples / "config"
    (config / "users.yml").rename(config / "user.yml")
    with pytest.raises(InvalidValue) as caught:
        transfer.import_deployment(examples, host)
    assert "user.yml: refused: looks like the users list under another name" in str(caught.value)
    assert nothing_stored(plain_sql)


def test_users_yaml_is_refused_not_silently_ignored(examples: Path, url: str) -> None:
    config = examples / "config"
    (config / "users.yml").rename(config / "users.yaml")
    line = one_error_line(omejdn_pg("--url", url, "import", str(examples), "--dry-run"))
    assert "users.yaml: refused: looks like the users list under another name" in line


def test_a_users_list_under_a_section_name_is_refused(
    examples: Path, host: Host, plain_sql: Any
) -> None:
    config = examples / "config"
    (config / "staff.yml").write_text((config / "users.yml").read_text())
    with pytest.raises(InvalidValue, match=r"staff\.yml: refused: a list of entries with 'usern"):
        transfer.import_deployment(examples, host)
    assert nothing_stored(plain_sql)


def test_ignored_files_are_reported(examples: Path, url: str) -> None:
    (examples / "config" / "omejdn.yml.bak").write_text("x: 1\n")
    (examples / "config" / "notes.txt").write_text("todo\n")
    (examples / "keys" / "README").write_text("keys live here\n")
    (examples / "keys" / "omejdn" / "omejdn.pem").write_text("not read\n")

    report = transfer.read_deployment(examples)
    result = ok(omejdn_pg("--url", url, "import", str(examples), "--dry-run"))

    for name in ("omejdn.yml.bak", "notes.txt", "keys/README", "omejdn/omejdn.pem"):
        assert any(name in note and "ignored" in note for note in report.notes), name
        assert name in result.stdout + result.stderr, name
