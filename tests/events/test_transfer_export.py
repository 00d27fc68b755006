"""Export is safe: all or nothing, secrets 0600 and directories 0700, ``--force``
atomic too and never a deleter of unrelated files (issue 12, item 5)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from omejdn_pg.errors import InvalidValue, TransferError
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer import swap


@pytest.fixture
def imported(examples: Path, host: Host) -> Host:
    transfer.import_deployment(examples, host)
    return host


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for a directory)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_secrets_are_0600_and_directories_0700(imported: Host, tmp_path: Path) -> None:
    out = tmp_path / "out"
    transfer.export_deployment(imported, out)

    directories = [out, *[p for p in out.rglob("*") if p.is_dir()]]
    assert {str(d.relative_to(out)) for d in directories} >= {
        ".",
        "config",
        "keys",
        "keys/omejdn",
        "keys/clients",
    }
    assert {d.name: mode(d) for d in directories} == {d.name: 0o700 for d in directories}
    for section in (out / "config").glob("*.yml"):
        assert mode(section) == 0o600, section  # any section may hold a secret
    for path in (out / "keys").rglob("*"):
        if path.is_dir():
            continue
        private = path.suffix == ".key" and b"PRIVATE KEY" in path.read_bytes()
        assert mode(path) == (0o600 if private else 0o644), path
    assert [p for p in (out / "keys" / "omejdn").glob("*.key") if mode(p) == 0o600]
    assert leftovers(tmp_path, "out") == []


def test_an_error_midway_leaves_no_directory_and_no_temporary(
    imported: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = FileStore.store_keys
    calls: list[Any] = []

    def fail_on_the_second_target(self: FileStore, *args: Any, **kwargs: Any) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(self.keys_dir))
        original(self, *args, **kwargs)

    monkeypatch.setattr(FileStore, "store_keys", fail_on_the_second_target)
    out = tmp_path / "out"

    with pytest.raises(TransferError, match=r"No space left.*nothing was exported"):
        transfer.export_deployment(imported, out)

    assert not out.exists()
    assert leftovers(tmp_path, "out") == []


def test_an_error_leaves_an_existing_export_untouched_even_with_force(
    imported: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    transfer.export_deployment(imported, out)
    before = tree(out)
    inode = out.stat().st_ino

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise InvalidValue("keys omejdn/x: simulated")

    monkeypatch.setattr(FileStore, "store_keys", refuse)
    with pytest.raises(TransferError, match="nothing was exported: keys omejdn/x: simulated"):
        transfer.export_deployment(imported, out, force=True)

    assert tree(out) == before
    assert out.stat().st_ino == inode
    assert leftovers(tmp_path, "out") == []


def test_a_database_the_layout_cannot_hold_is_refused_before_any_file_appears(
    host: Host, tmp_path: Path
) -> None:
    """Target a with kid b and target a.b would share the files a.b.*."""
    key = ec.generate_private_key(ec.SECP256R1())
    host.keys.store("omejdn", "a", [Key(key.public_key(), key, [], {"kid": "b"}), generate_key()])
    host.keys.store("omejdn", "a.b", [generate_key("ES256")])
    out = tmp_path / "out"

    with pytest.raises(TransferError, match=r"a\.b.*nothing|nothing.*a\.b"):
        transfer.export_deployment(host, out)

    assert not out.exists()
    assert leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_force_replaces_a_previous_export_whole(
    imported: Host,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exchange: bool,
) -> None:
    out = tmp_path / "out"
    transfer.export_deployment(imported, out)
    stale = out / "keys" / "omejdn" / "stale.key"
    stale.write_text("a key deleted from the database since")
    (out / "config" / "gone.yml").write_text("a: 1\n")
    if not exchange:
        monkeypatch.setattr(swap, "exchange", lambda _a, _b: False)

    with pytest.raises(TransferError, match="not empty"):
        transfer.export_deployment(imported, out)
    transfer.export_deployment(imported, out, force=True)

    assert not stale.exists()
    assert not (out / "config" / "gone.yml").exists()
    assert (out / "config" / "users.yml").exists()
    assert mode(out) == 0o700
    assert leftovers(tmp_path, "out") == []


def test_force_never_replaces_a_directory_that_holds_anything_else(
    imported: Host, tmp_path: Path
) -> None:
    """``export ~ --force`` must not delete a home directory."""
    home = tmp_path / "home"
    (home / "config").mkdir(parents=True)
    (home / "notes.txt").write_text("precious")
    before = tree(home)

    with pytest.raises(TransferError, match=r"holds notes\.txt, which is not part"):
        transfer.export_deployment(imported, home, force=True)

    assert tree(home) == before
    assert leftovers(tmp_path, "home") == []


def test_a_symbolic_link_or_a_file_is_refused(imported: Host, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    file = tmp_path / "file"
    file.write_text("x")

    with pytest.raises(TransferError, match="symbolic link"):
        transfer.export_deployment(imported, link, force=True)
    with pytest.raises(TransferError, match="not a directory"):
        transfer.export_deployment(imported, file, force=True)
    assert list(real.iterdir()) == []


def test_an_empty_directory_is_filled_and_a_new_one_created_with_its_parents(
    imported: Host, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    transfer.export_deployment(imported, empty)
    nested = tmp_path / "a" / "b" / "out"
    transfer.export_deployment(imported, nested)

    assert sorted(tree(empty)) == sorted(tree(nested))
    assert (empty / "config" / "users.yml").read_bytes() == (
        nested / "config" / "users.yml"
    ).read_bytes()
    assert os.listdir(tmp_path / "a" / "b") == ["out"]
