"""Omejdn's key files: ``keys/<type>/<target>[.<kid>].key|.cert|.yml``, read and planned.

The layout is upstream's ``DefaultKeysDB`` since "JWKS integration";
:class:`~omejdn_pg.host.files.store.FileStore` reads and stores through here,
and commits a store through :mod:`omejdn_pg.host.files.writing`.

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

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from omejdn_pg.errors import InvalidKeyMaterial, InvalidValue, located
from omejdn_pg.host.files.reading import KEY_FILE_LIMIT, read_file, read_text
from omejdn_pg.host.files.writing import JOURNAL, TEMPORARY, remove_orphan, replay
from omejdn_pg.json_values import check_json
from omejdn_pg.keys.algorithms import weak_key_problem
from omejdn_pg.keys.jwk import jwk_thumbprint
from omejdn_pg.keys.model import Key
from omejdn_pg.keys.pem import load_certificate_chain
from omejdn_pg.names import is_file_name
from omejdn_pg.yamlio import dump_yaml, load_yaml

KEY_SUFFIXES: Final = (".key", ".cert", ".yml")
NAME_MAX: Final = 255
"""Bytes in one file name on every file system Omejdn runs on."""

_THUMBPRINT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_DERIVED: Final = ("x5t", "x5t#S256")
_DESCRIBED: Final = ("kid", "use", "alg")

FileWrite = tuple[str, bytes, int]
"""A file a store writes: its name in the folder, its bytes, its mode."""


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


class Group:
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


def scan(folder: Path, *, clean: bool = False, confined: bool = False) -> dict[str, KeyFiles]:
    """The folder's key file groups by name, finishing an interrupted store first;
    with ``clean``, temporary files a crash left behind are removed. ``confined``
    keeps what is not a regular file, for the reader to refuse by name; a
    deployment's own folder skips it."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return {}
    except NotADirectoryError as exc:
        raise InvalidValue(f"{folder}: not a directory") from exc
    journals = sorted(
        e.name for e in entries if e.name.startswith(TEMPORARY) and e.name.endswith(JOURNAL)
    )
    if journals:
        for journal in journals:
            replay(folder, folder / journal)
        entries = list(os.scandir(folder))
    suffixes: dict[str, set[str]] = {}
    for entry in entries:
        if entry.name.startswith("."):
            if clean and entry.name.startswith(TEMPORARY):
                remove_orphan(folder / entry.name)
            continue
        stem, suffix = os.path.splitext(entry.name)
        # A confined store keeps what is not a regular file, for the reader to refuse
        # by name; a deployment's own folder skips it, as before.
        if suffix in KEY_SUFFIXES and stem and (entry.is_file() or confined):
            suffixes.setdefault(stem, set()).add(suffix)
    return {name: KeyFiles(folder, name, frozenset(found)) for name, found in suffixes.items()}


def plan_store(
    folder: Path,
    groups: Mapping[str, KeyFiles],
    target: str,
    keys: Sequence[Key],
    root: Path | None,
) -> tuple[list[FileWrite], list[str]]:
    """The files to write and the names to remove so that ``target`` holds ``keys``.

    A key that comes without its private key but with the kid and public key
    of a stored private key keeps the stored one, as KEYS_STORE does in
    PostgreSQL. Raises InvalidValue (nothing written) for a set the layout
    cannot hold unambiguously.
    """
    incoming = list(keys)
    where = f"keys {folder.name}/{target}"
    owned: dict[str, Group] = {}
    owners: dict[str, str] = {}
    for name, files in groups.items():
        if name == target or name.startswith(target + "."):
            group = Group(files, root)
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
    writes: list[FileWrite] = []
    for name, key in _layout(target, incoming, where):
        if name in groups and owners.get(name, name) != target:
            raise InvalidValue(
                f"{where}: {folder / name}.* hold keys of target "
                f"{owners.get(name, name)!r}; storing this set would overwrite them"
            )
        writes.extend(_key_files(name, key))
    written = {name for name, _data, _mode in writes}
    removes = sorted(
        path.name
        for group in owned.values()
        for path in group.files.paths
        if path.name not in written
    )
    return writes, removes


def _key_files(name: str, key: Key) -> list[FileWrite]:
    files: list[FileWrite] = []
    key_pem = key.key_pem()
    if key_pem is not None:
        mode = 0o600 if key.private_key is not None else 0o644
        files.append((f"{name}.key", key_pem.encode("ascii"), mode))
    if key.certificates:
        files.append((f"{name}.cert", key.certs_pem("").encode("ascii"), 0o644))
    descriptor = {"kid": key.kid, "use": key.use, "alg": key.alg}
    descriptor.update((k, v) for k, v in key.params.items() if k not in _DESCRIBED)
    text = dump_yaml(descriptor)
    files.append((f"{name}.yml", text.encode("utf-8"), 0o644))
    return files


# --- the layout ------------------------------------------------------------------------


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


def check_unique_kids(found: Sequence[StoredKey]) -> None:
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
    with located(path, InvalidValue, raise_as=InvalidKeyMaterial):
        check_json(descriptor, "descriptor")
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
