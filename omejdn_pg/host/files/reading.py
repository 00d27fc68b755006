"""Reading the files of a deployment directory without trusting them.

An import directory may come from anyone who could write into it, and the
default file plugins read a running deployment's files; both read through
here. Three things are bounded:

- *Which files.* :func:`read_file` opens only regular files (``O_NONBLOCK``,
  then ``fstat`` on what was opened: a FIFO, a socket or a device is refused
  without blocking on it or reading from it). For a confined reader (what an
  import uses) the file, after every symbolic link is resolved, must lie
  inside the directory, and the resolved path is opened with ``O_NOFOLLOW``:
  a ``config/webfinger.yml`` linking to the operator's plugin file, or a
  ``config/omejdn.yml`` linking to ``/etc/shadow``, is refused and named. A
  link that stays inside the directory (how Kubernetes mounts a ConfigMap) is
  read. The trade-off: a directory component swapped for a link between the
  check and the open is not caught (the final component is); whoever can do
  that owns the directory anyway.
- *How much.* Each file has a size limit, checked on the opened file and
  again while reading (a file that grows past it is refused, not read to
  exhaustion).
- *What it may become.* YAML is parsed by :mod:`omejdn_pg.yamlio`, which
  bounds what aliases may expand to (an alias bomb is refused, naming the file).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from omejdn_pg.errors import InvalidValue

SECTION_LIMIT: Final = 128 * 1024 * 1024
"""Bytes one ``config/*.yml`` may have: several times the largest users.yml a deployment
of Omejdn's YAML files holds (100,000 users with attributes are about 30 MB)."""
KEY_FILE_LIMIT: Final = 1024 * 1024
"""Bytes one ``.key``, ``.cert`` or ``.yml`` of a key may have (a chain of ten
certificates is about 20 KB)."""
_CHUNK: Final = 1024 * 1024


def read_file(path: Path, *, limit: int, root: Path | None = None) -> bytes | None:
    """The bytes of the regular file ``path``, or None if it does not exist.

    With ``root``, the file must resolve to a path inside ``root``. Raises
    InvalidValue naming ``path`` for anything else it refuses.
    """
    opened = path
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    if root is not None:
        real = Path(os.path.realpath(path))
        real_root = Path(os.path.realpath(root))
        if not real.is_relative_to(real_root):
            if not os.path.lexists(path):
                return None
            raise InvalidValue(
                f"{path}: refused: a symbolic link that leads out of {root} (to {real})"
            )
        opened = real
        flags |= os.O_NOFOLLOW
    try:
        # Not opened at all unless regular (opening a device can act on it; a socket
        # cannot be opened); the fstat below holds for what was opened in the end.
        _refuse_special(path, os.stat(opened).st_mode)
        descriptor = os.open(opened, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        info = os.fstat(descriptor)
        _refuse_special(path, info.st_mode)
        if info.st_size > limit:
            raise InvalidValue(f"{path}: refused: {info.st_size} bytes, more than {limit}")
        chunks = []
        size = 0
        while chunk := os.read(descriptor, min(_CHUNK, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise InvalidValue(f"{path}: refused: grew past {limit} bytes while read")
        return b"".join(chunks)
    except OSError as exc:
        raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
    finally:
        os.close(descriptor)


def read_text(path: Path, *, limit: int, root: Path | None = None) -> str | None:
    """:func:`read_file` decoded as UTF-8."""
    data = read_file(path, limit=limit, root=root)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValue(f"{path}: not UTF-8 text") from exc


def _refuse_special(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise InvalidValue(f"{path}: refused: {_kind(mode)}, not a regular file")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"
