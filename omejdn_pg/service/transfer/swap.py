"""Moving a staged export into place: a rename, or an atomic exchange of two directories.

A new target is one ``rename(2)``. An existing one is exchanged with the
staged tree where the kernel offers it (Linux ``renameat2(RENAME_EXCHANGE)``),
else renamed away, the new one renamed in, the old one deleted — a window in
which the path is missing, which the exchange does not have. A staging
folder whose export was killed (its process is gone) is deleted by the next
export.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

from omejdn_pg.host.files.writing import fsync_directory


def fsync_tree(root: Path) -> None:
    """Make the directory entries of the staged export durable before it is renamed in
    (the files were synced when written)."""
    for folder, _dirs, _files in os.walk(root, topdown=False):
        fsync_directory(Path(folder))


def clear_stale_staging(parent: Path, name: str) -> None:
    """Delete ``.NAME.export-PID-*`` staging folders whose export was killed (SIGKILL,
    power loss): its process is gone. One of a running export is left alone."""
    for folder in parent.glob(f".{name}.export-*-*"):
        pid = folder.name[len(f".{name}.export-") :].split("-", 1)[0]
        if not pid.isdigit() or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue  # another account's process: alive


def move_into_place(staging: Path, path: Path, replace: bool) -> None:
    """Rename the complete export to ``path``; with ``replace``, swap it with the
    directory there and delete that one."""
    if not replace:
        # rename(2) onto a missing or empty directory is atomic; a directory that
        # became non-empty meanwhile makes it fail (ENOTEMPTY), changing nothing.
        os.rename(staging, path)
        return
    if exchange(staging, path):
        shutil.rmtree(staging)  # now the old directory
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=staging.parent))
    os.rename(path, old / path.name)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old / path.name, path)
        old.rmdir()
        raise
    shutil.rmtree(old)


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if
    the platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
