"""Omejdn's file layout on disk: ``config/<section>.yml`` and ``keys/<type>/<target>.key|.cert``.

The same reader/writer serves the default plugins (a running deployment's
files) and the import/export commands (a deployment directory), so what the
one writes the other reads. Files are replaced atomically (write a temporary
file, then rename), so a reader never sees half a file; private keys are
created with mode 0600 from the start, never chmod-ed after the fact.

Parsed users and clients are cached per store, keyed by the file's stat
signature (mtime, size, inode; an atomic write changes the inode), because
parsing hashes every plaintext password with bcrypt and USER_GET asks the
file plugin on every login. The trade-off: each read costs a ``stat`` and a
deep copy of what it returns (so no caller can change the cache), and an
edit that keeps mtime, size and inode alike goes unseen until the next one.
"""

from __future__ import annotations

import copy
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import yaml

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import InvalidValue
from omejdn_pg.postgres.schema import validate_section_name

USERS_SECTION: Final = "users"
CLIENTS_SECTION: Final = "clients"
FILE_BACKEND: Final = "yaml"
CLIENT_CERTIFICATES: Final = "clients"

# libyaml's parser is several times faster on a users.yml of thousands of entries.
_Loader: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Final = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

_Signature = tuple[int, int, int]
_Entity = TypeVar("_Entity", User, Client)


@dataclass(frozen=True)
class _Parsed(Generic[_Entity]):
    """A section's users or clients as parsed from the file with ``signature``; never mutated."""

    signature: _Signature | None
    entities: tuple[_Entity, ...]
    by_name: dict[str, _Entity]
    """The first entity of each name, as a linear search would find it."""


class FileStore:
    """An Omejdn deployment directory."""

    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base_dir = Path(base_dir)
        self.config_dir = self.base_dir / "config"
        self.keys_dir = self.base_dir / "keys"
        self._parsed: dict[str, _Parsed[Any]] = {}
        self._parsed_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileStore({str(self.base_dir)!r})"

    # --- configuration sections ------------------------------------------------

    def section_path(self, section: str) -> Path:
        return self.config_dir / f"{validate_section_name(section)}.yml"

    def sections(self) -> list[str]:
        if not self.config_dir.is_dir():
            return []
        return sorted(p.stem for p in self.config_dir.glob("*.yml") if p.is_file())

    def read_section(self, section: str) -> Any:
        """The section's data, or None if its file does not exist."""
        path = self.section_path(section)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
        try:
            return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}:" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise InvalidValue(f"{path}:{line} {problem}") from exc

    def write_section(self, section: str, data: Any) -> None:
        text = yaml.dump(
            data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
        )
        _atomic_write(self.section_path(section), text.encode("utf-8"), mode=0o644)
        # The new inode already changes the signature; dropping the entry also covers
        # a freed inode reused by a write of the same size within one clock tick.
        with self._parsed_lock:
            self._parsed.pop(section, None)

    # --- users and clients -----------------------------------------------------

    def users(self) -> list[User]:
        """Every user of ``users.yml``, each a copy the caller may change."""
        return copy.deepcopy(list(self._users().entities))

    def user(self, username: str) -> User | None:
        """The first user named ``username`` (a copy), or None."""
        return copy.deepcopy(self._users().by_name.get(username))

    def write_users(self, users: list[User]) -> None:
        self.write_section(USERS_SECTION, [u.to_dict() for u in users])

    def clients(self) -> list[Client]:
        """Every client of ``clients.yml``, each a copy the caller may change."""
        return copy.deepcopy(list(self._clients().entities))

    def client(self, client_id: str) -> Client | None:
        """The first client with ``client_id`` (a copy), or None."""
        return copy.deepcopy(self._clients().by_name.get(client_id))

    def write_clients(self, clients: list[Client]) -> None:
        self.write_section(CLIENTS_SECTION, [c.to_dict() for c in clients])

    def _users(self) -> _Parsed[User]:
        return self._parse(
            USERS_SECTION,
            lambda item: User.from_dict(item, backend=FILE_BACKEND),
            lambda user: user.username,
        )

    def _clients(self) -> _Parsed[Client]:
        return self._parse(
            CLIENTS_SECTION,
            lambda item: Client.from_dict(item, backend=FILE_BACKEND),
            lambda client: client.client_id,
        )

    def _parse(
        self,
        section: str,
        parse: Callable[[dict[str, Any]], _Entity],
        name: Callable[[_Entity], str],
    ) -> _Parsed[_Entity]:
        """The section's entities, parsed again only if its file changed since the last time.

        The lock is held while parsing, so concurrent readers of a changed file wait
        for one parse (one bcrypt per plaintext password) instead of each paying it.
        """
        path = self.section_path(section)
        with self._parsed_lock:
            # Stat before reading: a change in between is then seen by the next read.
            signature = _signature(path)
            cached = self._parsed.get(section)
            if cached is not None and cached.signature == signature:
                return cached
            entities = tuple(parse(item) for item in self._list_section(section))
            by_name: dict[str, _Entity] = {}
            for entity in entities:
                by_name.setdefault(name(entity), entity)
            parsed = _Parsed(signature, entities, by_name)
            self._parsed[section] = parsed
            return parsed

    def _list_section(self, section: str) -> list[dict[str, Any]]:
        data = self.read_section(section)
        if data is None:
            return []
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise InvalidValue(f"{self.section_path(section)}: expected a list of mappings")
        return data

    # --- keys ------------------------------------------------------------------

    def key_paths(self, target_type: str, target: str) -> tuple[Path, Path]:
        folder = self.keys_dir / _path_part(target_type, "target_type")
        name = _path_part(target, "target")
        return folder / f"{name}.key", folder / f"{name}.cert"

    def key_targets(self, target_type: str | None = None) -> list[tuple[str, str]]:
        if not self.keys_dir.is_dir():
            return []
        folders = [self.keys_dir / target_type] if target_type else self.keys_dir.iterdir()
        found = {
            (folder.name, path.stem)
            for folder in folders
            if folder.is_dir()
            for path in folder.iterdir()
            if path.suffix in (".key", ".cert") and path.is_file()
        }
        return sorted(found)

    def load_key(self, target_type: str, target: str) -> KeyMaterial:
        key_path, cert_path = self.key_paths(target_type, target)
        key_pem = _read_optional(key_path)
        certs_pem = _read_optional(cert_path)
        return KeyMaterial.from_pem(
            key_pem, certs_pem, what=str(key_path if key_pem else cert_path)
        )

    def store_key(self, target_type: str, target: str, material: KeyMaterial) -> None:
        key_path, cert_path = self.key_paths(target_type, target)
        key_pem = material.key_pem()
        if key_pem:
            _atomic_write(key_path, key_pem.encode("ascii"), mode=0o600)
        else:
            key_path.unlink(missing_ok=True)
        if material.certs:
            _atomic_write(cert_path, material.certs_pem("").encode("ascii"), mode=0o644)
        else:
            cert_path.unlink(missing_ok=True)


def _path_part(value: str, field: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\x00" in value
    ):
        raise InvalidValue(f"{field} {value!r} cannot be used as a file name")
    return value


def _signature(path: Path) -> _Signature | None:
    """What changes when the file is replaced or edited; None if it does not exist."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _atomic_write(path: Path, data: bytes, *, mode: int) -> None:
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
