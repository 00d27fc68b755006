"""Omejdn's file layout on disk: ``config/<section>.yml`` and ``keys/<type>/<target>...``.

The same reader/writer serves the default plugins (a running deployment's
files) and the import/export commands (a deployment directory), so what the
one writes the other reads.

Every file is read through :mod:`omejdn_pg.host.files.reading`: regular files
only, each with a size limit, YAML with its aliases bounded; a store opened
with ``confined=True`` (an import's directory) also refuses a file whose
symbolic links lead out of the directory.

Configuration
-------------

``config/<section>.yml``, the sections ``users`` and ``clients`` holding the
user and client lists. A file is replaced atomically (temporary file, fsync,
rename), so a reader never sees half of it. A replaced file keeps the mode it
had; a new ``users.yml`` (password hashes) or ``clients.yml`` (client secrets)
is created 0600, other new sections 0644. A store opened with
``private=True`` (what an export writes) makes every section 0600 and every
directory 0700.

Parsed users and clients are cached per store, keyed by the file's stat
signature (mtime, size, inode; an atomic write changes the inode), because
parsing hashes every plaintext password with bcrypt and USER_GET asks the
file plugin on every login. The trade-off: each read costs a ``stat`` and a
deep copy of what it returns (so no caller can change the cache), and an
edit that keeps mtime, size and inode alike goes unseen until the next one.

Keys
----

The key files' layout, which target a group of files belongs to, and how a
store keeps that unambiguous are in :mod:`omejdn_pg.host.files.key_files`;
a store of several files commits through a journal
(:mod:`omejdn_pg.host.files.writing`). Within one process a lock serializes
stores and reads of keys; several processes sharing a directory are as unsafe
as they are with Omejdn itself (a reader may see a store in progress in
another process).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import InvalidValue
from omejdn_pg.host.files.key_files import (
    Group,
    StoredKey,
    check_unique_kids,
    plan_store,
    scan,
)
from omejdn_pg.host.files.reading import SECTION_LIMIT, read_text
from omejdn_pg.host.files.writing import atomic_write, commit, existing_mode
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.names import check_file_name, is_file_name, validate_section_name
from omejdn_pg.yamlio import dump_yaml, load_yaml

USERS_SECTION: Final = "users"
CLIENTS_SECTION: Final = "clients"
FILE_BACKEND: Final = "yaml"
CLIENT_KEYS: Final = "clients"
"""The target type of clients' key sets (target = client id), as upstream's ``DefaultClientDB``."""
CLIENT_CERTIFICATES: Final = CLIENT_KEYS  # the name this constant had before JWKS

SECRET_SECTIONS: Final = frozenset({USERS_SECTION, CLIENTS_SECTION})


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

    def __init__(
        self, base_dir: str | os.PathLike[str], *, private: bool = False, confined: bool = False
    ) -> None:
        self.base_dir = Path(base_dir)
        self.config_dir = self.base_dir / "config"
        self.keys_dir = self.base_dir / "keys"
        self.private = private
        """Every section 0600 and every directory 0700 (an export), not only the secrets."""
        self.confined = confined
        """Read only files inside ``base_dir``, symbolic links resolved (an import's
        directory); else links are followed wherever they lead (a deployment's own files,
        which the operator placed). Regular files only and size limits either way."""
        self._parsed: dict[str, _Parsed[Any]] = {}
        self._parsed_lock = threading.Lock()
        self._keys_lock = threading.RLock()

    def __repr__(self) -> str:
        return f"FileStore({str(self.base_dir)!r})"

    # --- configuration sections ------------------------------------------------

    def section_path(self, section: str) -> Path:
        return self.config_dir / f"{validate_section_name(section)}.yml"

    def sections(self) -> list[str]:
        if not self.config_dir.is_dir():
            return []
        return sorted(p.stem for p in self.config_dir.glob("*.yml") if p.is_file())

    @property
    def root(self) -> Path | None:
        """What every file read must lie inside, if the store is confined."""
        return self.base_dir if self.confined else None

    def read_section(self, section: str) -> Any:
        """The section's data, or None if its file does not exist."""
        path = self.section_path(section)
        text = read_text(path, limit=SECTION_LIMIT, root=self.root)
        if text is None:
            return None
        return load_yaml(text, path)

    def write_section(self, section: str, data: Any) -> None:
        path = self.section_path(section)
        text = dump_yaml(data)
        if self.private:
            mode = 0o600
        else:
            mode = existing_mode(path) or (0o600 if section in SECRET_SECTIONS else 0o644)
        self._make_dir(self.config_dir)
        atomic_write(path, text.encode("utf-8"), mode=mode)
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
        """Every client of ``clients.yml`` as written there, each a copy the caller may change.

        A ``jwks`` field, if the file has one, is left in the metadata; the
        client plugin decides what it means.
        """
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

    # --- keys: reading -----------------------------------------------------------

    def key_types(self) -> list[str]:
        """The target types that have a folder under ``keys/``."""
        if not self.keys_dir.is_dir():
            return []
        return sorted(
            p.name for p in self.keys_dir.iterdir() if p.is_dir() and is_file_name(p.name)
        )

    def stored_keys(self, target_type: str, target: str | None = None) -> list[StoredKey]:
        """The keys of ``target`` (or of every target) of ``target_type``, with their files,
        ordered by target and then as Ruby's sorted glob meets them."""
        check_file_name(target_type, "target_type")
        if target is not None:
            check_file_name(target, "target")
        folder = self.keys_dir / target_type
        with self._keys_lock:
            groups = scan(folder, confined=self.confined)
            found = []
            for name, files in groups.items():
                if target is not None and name != target and not name.startswith(target + "."):
                    continue  # the target is a prefix of the name of every group it owns
                group = Group(files, self.root)
                owner = group.owner()
                if target is None or owner == target:
                    found.append(StoredKey(owner, group.key(), files))
        found.sort(key=lambda stored: (stored.target, stored.files.order))
        check_unique_kids(found)
        return found

    def key_sets(self, target_type: str) -> dict[str, KeySet]:
        """Every target of ``target_type`` with its keys, in one scan of the folder."""
        grouped: dict[str, list[Key]] = {}
        for stored in self.stored_keys(target_type):
            grouped.setdefault(stored.target, []).append(stored.key)
        return {target: KeySet(keys) for target, keys in grouped.items()}

    def load_keys(self, target_type: str, target: str) -> KeySet:
        """The target's keys, private members included; empty if it has none."""
        return KeySet(stored.key for stored in self.stored_keys(target_type, target))

    def key_targets(self, target_type: str | None = None) -> list[tuple[str, str]]:
        """``(target_type, target)`` of every target that has keys, sorted."""
        types = [target_type] if target_type is not None else self.key_types()
        return sorted(
            {(kind, stored.target) for kind in types for stored in self.stored_keys(kind)}
        )

    def load_key(self, target_type: str, target: str) -> KeyMaterial:
        """The target's first key in the older one-key form (empty if none); prefer
        :meth:`load_keys`, which this only narrows."""
        keys = self.load_keys(target_type, target)
        return KeyMaterial.from_key(keys[0]) if keys else KeyMaterial()

    # --- keys: writing -----------------------------------------------------------

    def store_keys(self, target_type: str, target: str, keys: KeySet | Iterable[Key]) -> None:
        """Replace the target's keys with ``keys``; an empty set deletes them.

        A key that comes without its private key but with the kid and public key
        of a stored private key keeps the stored one, as KEYS_STORE does in
        PostgreSQL. Raises InvalidValue (nothing written) for a set the layout
        cannot hold unambiguously.
        """
        check_file_name(target_type, "target_type")
        check_file_name(target, "target")
        incoming = list(keys if isinstance(keys, KeySet) else KeySet(keys))
        folder = self.keys_dir / target_type
        with self._keys_lock:
            groups = scan(folder, clean=True, confined=self.confined)
            writes, removes = plan_store(folder, groups, target, incoming, self.root)
            if not writes and not removes:
                return
            self._make_dir(self.keys_dir)
            self._make_dir(folder)
            commit(folder, writes, removes)

    def store_key(self, target_type: str, target: str, material: KeyMaterial) -> None:
        """Store ``material`` as the target's only key (empty material deletes its keys)."""
        key = material.to_key()
        self.store_keys(target_type, target, [key] if key is not None else [])

    def _make_dir(self, path: Path) -> None:
        if self.private:
            if not path.is_dir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        else:
            path.mkdir(parents=True, exist_ok=True)


def _signature(path: Path) -> _Signature | None:
    """What changes when the file is replaced or edited; None if it does not exist."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
    return (info.st_mtime_ns, info.st_size, info.st_ino)
