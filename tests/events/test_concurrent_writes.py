"""Many writers on the same user, client and section: the end state is one whole write.

16 threads x 200 mixed writes through the events. Every write is a complete,
self-describing state (it names its writer and sequence number, and its size
varies with them), so a mixture of two writes — one writer's attributes with
another's metadata, a key set of one and the keys of another — is detectable
with plain SQL afterwards. No write may fail (no duplicate key, no deadlock
reaching the caller).

Writers of one object take turns on its lock, so a writer may wait for every
other writer of that object: on a loaded machine longer than any fixed
``lock_timeout``. The plugin here turns the lock and statement timeouts off,
so that a failure can only be one of concurrency, never one of scheduling.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omejdn_pg import Client, PluginLoader, User
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.passwords import OMEJDN_HASH
from tests.kits.plugins import plugin_file
from tests.kits.threads import run_together
from tests.kits.witness import PlainSQL

THREADS, WRITES = 16, 200
KEY_POOL = [generate_key("ES256") for _ in range(6)]


def attributes_of(writer: int, seq: int) -> dict[str, Any]:
    size = 1 + (writer + seq) % 5
    return {"writer": writer, "seq": seq, **{f"a{i}": f"{writer}-{seq}-{i}" for i in range(size)}}


def keys_of(writer: int, seq: int) -> KeySet:
    start = (writer + seq) % len(KEY_POOL)
    count = 1 + seq % 3
    return KeySet([KEY_POOL[(start + i) % len(KEY_POOL)] for i in range(count)])


@pytest.fixture
def seeded_host(database: ConnectionSettings, tmp_path: Path) -> Iterator[Host]:
    unbounded = "      pool: {size: 16}\n      lock_timeout: 0\n      statement_timeout: 0\n"
    path = plugin_file(tmp_path / "plugins.yml", database, backend=unbounded)
    with Host(PluginLoader.from_files([path], base_dir=tmp_path)) as opened:
        opened.users.add(User(username="alice", password=OMEJDN_HASH))
        opened.clients.add(Client(metadata={"client_id": "portal"}))
        yield opened


@pytest.mark.slow
def test_sixteen_writers_leave_one_whole_write_of_each_object(
    seeded_host: Host, plain_sql: PlainSQL
) -> None:
    def work(writer: int) -> int:
        rng = random.Random(writer)
        for seq in range(WRITES):
            kind = rng.choice(("user", "client", "section", "keys"))
            if kind == "user":
                seeded_host.users.save(
                    User(
                        username="alice",
                        password=OMEJDN_HASH,
                        attributes=attributes_of(writer, seq),
                        consent={"portal": [f"{writer}-{seq}"]},
                        backend="postgres",
                    )
                )
            elif kind == "client":
                metadata = {
                    "client_id": "portal",
                    **{f"m{i}": seq for i in range(1 + seq % 4)},
                    "writer": writer,
                    "seq": seq,
                    "jwks": keys_of(writer, seq).to_jwks(private=False),
                }
                seeded_host.clients.save(
                    Client(
                        metadata=metadata, attributes=attributes_of(writer, seq), backend="postgres"
                    )
                )
            elif kind == "section":
                seeded_host.config.write("omejdn", attributes_of(writer, seq))
            else:
                seeded_host.keys.store("omejdn", "omejdn", keys_of(writer, seq))
        return writer

    results = run_together(THREADS, work)
    assert [r for r in results if isinstance(r, BaseException)] == []

    user_attributes = dict(plain_sql.rows("SELECT key, value FROM attributes WHERE type = 'user'"))
    assert user_attributes == attributes_of(user_attributes["writer"], user_attributes["seq"])
    consent = plain_sql.value("SELECT consent FROM users")
    assert consent == {"portal": [f"{user_attributes['writer']}-{user_attributes['seq']}"]}

    metadata = dict(plain_sql.rows("SELECT key, value FROM clients"))
    writer, seq = metadata["writer"], metadata["seq"]
    assert set(metadata) == {"client_id", "writer", "seq", *(f"m{i}" for i in range(1 + seq % 4))}
    client_attributes = dict(
        plain_sql.rows("SELECT key, value FROM attributes WHERE type = 'client'")
    )
    # Metadata, attributes and keys of the client all come from the same write.
    assert client_attributes == attributes_of(writer, seq)
    client_kids = [
        kid
        for (kid,) in plain_sql.rows(
            "SELECT kid FROM keys WHERE target_type = 'clients' ORDER BY position"
        )
    ]
    assert client_kids == [key.kid for key in keys_of(writer, seq)]

    section = dict(plain_sql.rows("SELECT key, value FROM configuration_omejdn"))
    assert section == attributes_of(section["writer"], section["seq"])

    signer_kids = {
        kid for (kid,) in plain_sql.rows("SELECT kid FROM keys WHERE target_type = 'omejdn'")
    }
    assert any(
        signer_kids == {key.kid for key in keys_of(w, s)}
        for w in range(THREADS)
        for s in range(WRITES)
    )
    assert (
        plain_sql.value("SELECT count(*) FROM keys WHERE target_type = 'omejdn' AND type = 'sk'")
        == 1
    )
