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

Keys (upstream's ``DefaultKeysDB`` since "JWKS integration")
---------------------------------------------------------------

A target's keys live in ``keys/<target_type>/``: a one-key set as
``<target>.key|.cert|.yml``, each key of a larger set as
``<target>.<kid>.key|.cert|.yml``. Files are grouped by their name minus the
last extension (other extensions and names starting with a dot are ignored):

- ``.key``: the PEM private key (PKCS#8 written; PKCS#1 and SEC1 read), mode
  0600; or, for a key with neither a private key nor a chain, its public key.
- ``.cert``: the PEM certificate chain, leaf first.
- ``.yml``: the descriptor: ``kid``, ``use`` and ``alg`` (always written, with
  their effective values, so that a Ruby Omejdn — whose default for every EC
  key is ES256 — reads the right ``alg``), then every other parameter as
  given. ``x5c`` never goes there (the ``.cert`` holds the chain);
  ``x5t``/``x5t#S256`` are derived from the ``.cert`` and neither written nor
  trusted when read next to one (upstream writes them, in its own encoding,
  and they go stale when a certificate is renewed in place).

Keys read from files are ``active``: the layout has no lifecycle. A set loads
in the order Ruby's sorted ``Dir.glob`` meets its files, so a Ruby Omejdn on
the same directory signs with the same key (the first private ``sig`` key).

Which target a group belongs to. Upstream globs ``<target>.*``, so target
``app`` also picks up the files of target ``app.v2`` — a client would accept
another client's keys. Here a group named ``G`` belongs to:

1. target ``P`` if its ``.yml`` records kid ``K`` and ``G == P + "." + K``
   (every multi-key group this module writes);
2. else target ``P`` if ``G == P + "." + N`` where ``N`` is the RFC 7638
   thumbprint of the group's key (upstream's multi-key files, whose ``.yml``
   lacks the kid: its kids are thumbprints; and the name this module uses for
   a kid that cannot be part of a file name);
3. else target ``G`` itself (one-key sets, the pre-JWKS layout).

Writes keep that reading unambiguous: a kid that is not usable in a file name
(``/``, control characters, a leading dot, too long) is written under its
thumbprint; a one-key target whose name ends in ``.<its kid>`` or
``.<its thumbprint>`` is refused, and so is a store that would overwrite files
another target owns (target ``a`` with kid ``b`` and target ``a.b`` cannot
both exist in files). A group that reads as its own target is never
attributed to a shorter one by guessing.

A store replaces all of the target's files. It writes the new files under
temporary names, records the renames and removals in a journal, then renames
and removes: a crash leaves either the old files (no journal yet) or a
journal, which the next read or write of the folder finishes. Within one
process a lock serializes stores and reads of keys; several processes sharing
a directory are as unsafe as they are with Omejdn itself (a reader may see a
store in progress in another process).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from omejdn_pg.entities import Client, KeyMaterial, User
from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue
from omejdn_pg.host.files.reading import (
    KEY_FILE_LIMIT,
    SECTION_LIMIT,
    load_yaml,
    read_file,
    read_text,
)
from omejdn_pg.json_values import check_json
from omejdn_pg.keys.algorithms import weak_key_problem
from omejdn_pg.keys.jwk import jwk_thumbprint
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.pem import load_certificate_chain
from omejdn_pg.names import check_file_name, is_file_name, validate_section_name

USERS_SECTION: Final = "users"
CLIENTS_SECTION: Final = "clients"
FILE_BACKEND: Final = "yaml"
CLIENT_KEYS: Final = "clients"
"""The target type of clients' key sets (target = client id), as upstream's ``DefaultClientDB``."""
CLIENT_CERTIFICATES: Final = CLIENT_KEYS  # the name this constant had before JWKS

SECRET_SECTIONS: Final = frozenset({USERS_SECTION, CLIENTS_SECTION})
KEY_SUFFIXES: Final = (".key", ".cert", ".yml")
NAME_MAX: Final = 255
"""Bytes in one file name on every file system Omejdn runs on."""

_TEMPORARY: Final = ".omejdn-pg."
_JOURNAL: Final = ".journal"
_ORPHAN_AGE: Final = 600.0
"""Seconds after which a temporary file no journal names is a crash's leftover."""
_THUMBPRINT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
"""Omejdn's section names as the PostgreSQL backend allows them (``configuration_<name>``
must be a table name); the file backend may not import that one, so the rule is repeated."""
_DERIVED: Final = ("x5t", "x5t#S256")
_DESCRIBED: Final = ("kid", "use", "alg")


def _dump(data: Any) -> str:
    """``data`` as Omejdn's block-style YAML, keys in their order."""
    import yaml

    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(
        data, Dumper=dumper, sort_keys=False, allow_unicode=True, default_flow_style=False
    )


_Signature = tuple[int, int, int]
_Entity = TypeVar("_Entity", User, Client)


@dataclass(frozen=True)
class _Parsed(Generic[_Entity]):
    """A section's users or clients as parsed from the file with ``signature``; never mutated."""

    signature: _Signature | None
    entities: tuple[_Entity, ...]
    by_name: dict[str, _Entity]
    """The first entity of each name, as a linear search would find it."""


@dataclass(frozen=True)
class KeyFiles:
    """One group of key files: ``<folder>/<name>.key|.cert|.yml`` (those that exist)."""

    folder: Path
    name: str
    suffixes: frozenset[str]

    def path(self, suffix: str) -> Path:
        return self.folder / f"{self.name}{suffix}"

    @property
    def paths(self) -> list[Path]:
        return [self.path(s) for s in KEY_SUFFIXES if s in self.suffixes]

    @property
    def shown(self) -> Path:
        """The file an error names: the ``.key``, else the ``.cert``, else the ``.yml``."""
        return self.paths[0]

    @property
    def order(self) -> str:
        """Where Ruby's sorted ``Dir.glob`` first meets the group."""
        return min(self.name + s for s in self.suffixes)


@dataclass(frozen=True)
class StoredKey:
    """A key read from files, with the target it belongs to and the files that hold it."""

    target: str
    key: Key
    files: KeyFiles


class _Group:
    """A group of key files, parsed as far as a question about it needs."""

    def __init__(self, files: KeyFiles, root: Path | None) -> None:
        self.files = files
        self.root = root
        self._descriptor: dict[str, Any] | None = None
        self._key: Key | None = None

    def descriptor(self) -> dict[str, Any]:
        """The ``.yml`` mapping ({} without one), checked as far as the file alone allows."""
        if self._descriptor is None:
            self._descriptor = _read_descriptor(self.files, self.root)
        return self._descriptor

    def recorded_kid(self) -> str | None:
        kid = self.descriptor().get("kid")
        return kid if isinstance(kid, str) and kid else None

    def key(self) -> Key:
        if self._key is None:
            self._key = _read_key(self.files, self.descriptor(), self.root)
        return self._key

    def owner(self) -> str:
        """The target this group belongs to (the module docstring's rules 1-3)."""
        return owner_of(self.files.name, self.recorded_kid(), lambda: self.key().public_key)


def owner_of(name: str, recorded_kid: str | None, public_key: Callable[[], Any]) -> str:
    """The target of a group named ``name`` whose ``.yml`` records ``recorded_kid``;
    ``public_key`` is asked only when the name could end in a thumbprint."""
    if (
        recorded_kid is not None
        and len(name) > len(recorded_kid) + 1
        and name.endswith("." + recorded_kid)
    ):
        return name[: -len(recorded_kid) - 1]
    prefix, dot, last = name.rpartition(".")
    if dot and prefix and _THUMBPRINT.fullmatch(last) and last == jwk_thumbprint(public_key()):
        return prefix
    return name


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
        text = _dump(data)
        if self.private:
            mode = 0o600
        else:
            mode = _existing_mode(path) or (0o600 if section in SECRET_SECTIONS else 0o644)
        self._make_dir(self.config_dir)
        _atomic_write(path, text.encode("utf-8"), mode=mode)
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
            groups = self._scan(folder)
            found = []
            for name, files in groups.items():
                if target is not None and name != target and not name.startswith(target + "."):
                    continue  # the target is a prefix of the name of every group it owns
                group = _Group(files, self.root)
                owner = group.owner()
                if target is None or owner == target:
                    found.append(StoredKey(owner, group.key(), files))
        found.sort(key=lambda stored: (stored.target, stored.files.order))
        _check_unique_kids(found)
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
        where = f"keys {target_type}/{target}"
        with self._keys_lock:
            groups = self._scan(folder, clean=True)
            owned: dict[str, _Group] = {}
            owners: dict[str, str] = {}
            for name, files in groups.items():
                if name == target or name.startswith(target + "."):
                    group = _Group(files, self.root)
                    owners[name] = group.owner()
                    if owners[name] == target:
                        owned[name] = group
            weak = [(key, problem) for key in incoming if (problem := weak_key_problem(key))]
            if weak or any(key.private_key is None for key in incoming):
                stored = {g.key().kid: g.key() for g in owned.values()}
                # A weak key already stored is no new key: storing a set back must work.
                for key, problem in weak:
                    old = stored.get(key.kid)
                    if old is None or not old.same_key(key):
                        raise InvalidKeyMaterial(f"{where}: key {key.kid}: {problem}")
                incoming = [_keep_private(key, stored.get(key.kid)) for key in incoming]
            planned = _layout(target, incoming, where)
            writes: list[tuple[str, bytes, int]] = []
            for name, key in planned:
                if name in groups and owners.get(name, name) != target:
                    raise InvalidValue(
                        f"{where}: {folder / name}.* hold keys of target "
                        f"{owners.get(name, name)!r}; storing this set would overwrite them"
                    )
                writes.extend(self._key_files(name, key))
            written = {name for name, _data, _mode in writes}
            removes = sorted(
                path.name
                for group in owned.values()
                for path in group.files.paths
                if path.name not in written
            )
            if not writes and not removes:
                return
            self._make_dir(self.keys_dir)
            self._make_dir(folder)
            _commit(folder, writes, removes)

    def store_key(self, target_type: str, target: str, material: KeyMaterial) -> None:
        """Store ``material`` as the target's only key (empty material deletes its keys)."""
        key = material.to_key()
        self.store_keys(target_type, target, [key] if key is not None else [])

    def _key_files(self, name: str, key: Key) -> list[tuple[str, bytes, int]]:
        files: list[tuple[str, bytes, int]] = []
        key_pem = key.key_pem()
        if key_pem is not None:
            mode = 0o600 if key.private_key is not None else 0o644
            files.append((f"{name}.key", key_pem.encode("ascii"), mode))
        if key.certificates:
            files.append((f"{name}.cert", key.certs_pem("").encode("ascii"), 0o644))
        descriptor = {"kid": key.kid, "use": key.use, "alg": key.alg}
        descriptor.update((k, v) for k, v in key.params.items() if k not in _DESCRIBED)
        text = _dump(descriptor)
        files.append((f"{name}.yml", text.encode("utf-8"), 0o644))
        return files

    def _make_dir(self, path: Path) -> None:
        if self.private:
            if not path.is_dir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path, 0o700)
        else:
            path.mkdir(parents=True, exist_ok=True)

    def _scan(self, folder: Path, *, clean: bool = False) -> dict[str, KeyFiles]:
        """The folder's key file groups by name, finishing an interrupted store first;
        with ``clean``, temporary files a crash left behind are removed."""
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return {}
        except NotADirectoryError as exc:
            raise InvalidValue(f"{folder}: not a directory") from exc
        journals = sorted(
            e.name for e in entries if e.name.startswith(_TEMPORARY) and e.name.endswith(_JOURNAL)
        )
        if journals:
            for journal in journals:
                _replay(folder, folder / journal)
            entries = list(os.scandir(folder))
        suffixes: dict[str, set[str]] = {}
        for entry in entries:
            if entry.name.startswith("."):
                if clean and entry.name.startswith(_TEMPORARY):
                    _remove_orphan(folder / entry.name)
                continue
            stem, suffix = os.path.splitext(entry.name)
            # A confined store keeps what is not a regular file, for the reader to refuse
            # by name; a deployment's own folder skips it, as before.
            if suffix in KEY_SUFFIXES and stem and (entry.is_file() or self.confined):
                suffixes.setdefault(stem, set()).add(suffix)
        return {name: KeyFiles(folder, name, frozenset(found)) for name, found in suffixes.items()}


# --- keys: the layout ----------------------------------------------------------------


def _layout(target: str, keys: Sequence[Key], where: str) -> list[tuple[str, Key]]:
    """The group name of every key: ``target`` for a one-key set, else ``target.<kid>``
    (or ``target.<thumbprint>`` for a kid that cannot be part of a file name)."""
    if not keys:
        return []
    if len(keys) == 1:
        names = [(target, keys[0])]
    else:
        names = [(f"{target}.{_name_part(target, key)}", key) for key in keys]
    seen: dict[str, str] = {}
    for name, key in names:
        if len((name + ".cert").encode("utf-8")) > NAME_MAX:
            raise InvalidValue(
                f"{where}: the file name {name}.cert would be longer than {NAME_MAX} bytes"
            )
        if name in seen:
            raise InvalidValue(
                f"{where}: keys {seen[name]!r} and {key.kid!r} would share the files {name}.*"
            )
        seen[name] = key.kid
        owner = owner_of(name, key.kid, _public_key_of(key))
        if owner != target:
            raise InvalidValue(
                f"{where}: the files {name}.* of key {key.kid!r} would read back as a key "
                f"of target {owner!r}; give the key another kid"
            )
    return names


def _public_key_of(key: Key) -> Callable[[], Any]:
    return lambda: key.public_key


def _name_part(target: str, key: Key) -> str:
    """The kid, if it can follow ``target.`` in a file name; else the key's thumbprint."""
    kid = key.kid
    if is_file_name(kid) and len(f"{target}.{kid}.cert".encode()) <= NAME_MAX:
        return kid
    return jwk_thumbprint(key.public_key)


def _keep_private(key: Key, stored: Key | None) -> Key:
    if (
        key.private_key is None
        and stored is not None
        and stored.private_key is not None
        and stored.same_key(key)
    ):
        return dataclasses.replace(key, private_key=stored.private_key)
    return key


def _check_unique_kids(found: Sequence[StoredKey]) -> None:
    first: dict[tuple[str, str], StoredKey] = {}
    for stored in found:
        seen = first.setdefault((stored.target, stored.key.kid), stored)
        if seen is not stored:
            raise InvalidKeyMaterial(
                f"{stored.files.shown}: kid {stored.key.kid!r} is also the kid of "
                f"{seen.files.shown} (target {stored.target!r})"
            )


def _read_descriptor(files: KeyFiles, root: Path | None) -> dict[str, Any]:
    if ".yml" not in files.suffixes:
        return {}
    path = files.path(".yml")
    text = read_text(path, limit=KEY_FILE_LIMIT, root=root)
    if text is None:
        return {}
    data = load_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidKeyMaterial(
            f"{path}: a key descriptor must be a mapping, got {type(data).__name__}"
        )
    descriptor = dict(data)
    for name in descriptor:
        if not isinstance(name, str):
            raise InvalidKeyMaterial(f"{path}: parameter names must be strings, got {name!r}")
    try:
        check_json(descriptor, "descriptor")
    except InvalidValue as exc:
        raise InvalidKeyMaterial(f"{path}: {exc}") from exc
    if "x5c" in descriptor:
        raise InvalidKeyMaterial(
            f"{path}: 'x5c' has no place in a descriptor; the chain belongs in "
            f"{files.path('.cert').name}"
        )
    if "kid" in descriptor and (not isinstance(descriptor["kid"], str) or not descriptor["kid"]):
        raise InvalidKeyMaterial(
            f"{path}: 'kid' must be a non-empty string, got {descriptor['kid']!r}"
        )
    return descriptor


def _read_key(files: KeyFiles, descriptor: Mapping[str, Any], root: Path | None) -> Key:
    def read(path: Path) -> bytes | None:
        return read_file(path, limit=KEY_FILE_LIMIT, root=root)

    key_pem = read(files.path(".key")) if ".key" in files.suffixes else None
    cert_path = files.path(".cert")
    certs_pem = read(cert_path) if ".cert" in files.suffixes else None
    if not key_pem and not certs_pem:
        raise InvalidKeyMaterial(
            f"{files.shown}: neither {files.name}.key nor {files.name}.cert holds a key"
        )
    params = dict(descriptor)
    if certs_pem:
        # Checked on its own first, so that an error in it names the .cert.
        load_certificate_chain(certs_pem, str(cert_path))
        for name in _DERIVED:
            params.pop(name, None)
    return Key.from_pem(key_pem or None, certs_pem or None, params, what=str(files.shown))


# --- keys: committing a store ----------------------------------------------------------


def _commit(folder: Path, writes: Sequence[tuple[str, bytes, int]], removes: Sequence[str]) -> None:
    """Write ``writes`` under temporary names, journal the renames and removals, apply them."""
    token = secrets.token_hex(8)
    renames: list[tuple[str, str]] = []
    journal_temporary = folder / f"{_TEMPORARY}{token}.j"
    try:
        for index, (name, data, mode) in enumerate(writes):
            temporary = f"{_TEMPORARY}{token}.{index}"
            _write_new(folder / temporary, data, mode)
            renames.append((temporary, name))
        _write_new(
            journal_temporary,
            json.dumps({"renames": renames, "remove": list(removes)}).encode("utf-8"),
            0o600,
        )
        fsync_directory(folder)
        journal = folder / f"{_TEMPORARY}{token}{_JOURNAL}"
        os.replace(journal_temporary, journal)
        fsync_directory(folder)
    except BaseException:
        for temporary, _name in renames:
            (folder / temporary).unlink(missing_ok=True)
        journal_temporary.unlink(missing_ok=True)
        raise
    _replay(folder, journal)


def _replay(folder: Path, journal: Path) -> None:
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


def _remove_orphan(path: Path) -> None:
    """Remove a temporary file no committed journal names, once it is old enough that no
    store in progress (in another process) can still be writing it."""
    if path.name.endswith(_JOURNAL):
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


def _signature(path: Path) -> _Signature | None:
    """What changes when the file is replaced or edited; None if it does not exist."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidValue(f"{path}: cannot read: {exc.strerror}") from exc
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def _existing_mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
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
