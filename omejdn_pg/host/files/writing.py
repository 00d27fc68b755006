"""Durable writes of a deployment's files: one file atomically, or a group through a journal.

A section is one file, replaced atomically (temporary file, fsync, rename), so
a reader never sees half of it. A target's keys are several files that must
change together: the new ones are written under temporary names, the renames
and removals recorded in a journal, then applied. A crash leaves either the
old files (no journal yet) or a journal, which the next read or write of the
folder replays (:func:`replay` is idempotent). The trade-off: no lock across
processes, so two processes storing into one folder are as unsafe as two
Omejdn servers sharing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from omejdn_pg.errors import InvalidValue

TEMPORARY: Final = ".omejdn-pg."
"""The prefix of every temporary file and journal a key store writes."""
JOURNAL: Final = ".journal"
_ORPHAN_AGE: Final = 600.0
"""Seconds after which a temporary file no journal names is a crash's leftover."""


def commit(folder: Path, writes: Sequence[tuple[str, bytes, int]], removes: Sequence[str]) -> None:
    """Write ``writes`` under temporary names, journal the renames and removals, apply them."""
    token = secrets.token_hex(8)
    renames: list[tuple[str, str]] = []
    journal_temporary = folder / f"{TEMPORARY}{token}.j"
    try:
        for index, (name, data, mode) in enumerate(writes):
            temporary = f"{TEMPORARY}{token}.{index}"
            _write_new(folder / temporary, data, mode)
            renames.append((temporary, name))
        _write_new(
            journal_temporary,
            json.dumps({"renames": renames, "remove": list(removes)}).encode("utf-8"),
            0o600,
        )
        fsync_directory(folder)
        journal = folder / f"{TEMPORARY}{token}{JOURNAL}"
        os.replace(journal_temporary, journal)
        fsync_directory(folder)
    except BaseException:
        for temporary, _name in renames:
            (folder / temporary).unlink(missing_ok=True)
        journal_temporary.unlink(missing_ok=True)
        raise
    replay(folder, journal)


def replay(folder: Path, journal: Path) -> None:
    """Apply a committed journal; idempotent, so an interrupted replay is simply repeated."""
    try:
        entries = json.loads(journal.read_text(encoding="utf-8"))
        renames = [(str(a), str(b)) for a, b in entries["renames"]]
        removes = [str(name) for name in entries["remove"]]
    except FileNotFoundError:
        return  # replayed meanwhile (another thread or process)
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidValue(f"{journal}: unreadable journal of an interrupted key store") from exc
    for name in [n for pair in renames for n in pair] + removes:
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise InvalidValue(f"{journal}: names a file outside {folder}: {name!r}")
    for temporary, name in renames:
        with contextlib.suppress(FileNotFoundError):  # renamed by an interrupted replay
            os.replace(folder / temporary, folder / name)
    for name in removes:
        (folder / name).unlink(missing_ok=True)
    fsync_directory(folder)
    journal.unlink(missing_ok=True)


def remove_orphan(path: Path) -> None:
    """Remove a temporary file no committed journal names, once it is old enough that no
    store in progress (in another process) can still be writing it."""
    if path.name.endswith(JOURNAL):
        return
    try:
        if time.time() - path.stat().st_mtime > _ORPHAN_AGE:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (which must not exist) with exactly ``mode``, durably."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(descriptor, mode)  # the umask may have narrowed or the mode widened
        with os.fdopen(descriptor, "wb") as handle:
            descriptor = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if descriptor >= 0:
            os.close(descriptor)


def fsync_directory(folder: Path) -> None:
    """Make ``folder``'s entries (a file renamed or linked in) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- helpers -------------------------------------------------------------------------


def existing_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
