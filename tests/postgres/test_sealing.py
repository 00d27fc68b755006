"""Private keys sealed at rest: bound to their row, several key-encryption keys, re-wrap."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from omejdn_pg.errors import ConfigurationError, InvalidKeyMaterial
from omejdn_pg.keys.key_set import KeySet
from omejdn_pg.keys.model import generate_key
from omejdn_pg.postgres.database.unit_of_work import Database
from omejdn_pg.postgres.repositories.keys import KeyRepository
from omejdn_pg.sealing import PREFIX, Keyring, generate_secret, sealed_by
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.settings.validation import parse_backend_section
from tests.kits.witness import PlainSQL
from tests.secrets import watch

OLD, NEW = watch(generate_secret()), watch(generate_secret())


def keyring(*ids: str) -> Keyring:
    secrets = {"old": OLD, "new": NEW, "other": generate_secret()}
    return Keyring.from_settings(
        [{"id": kek, "env": f"KEK_{kek.upper()}"} for kek in ids],
        {f"KEK_{kek.upper()}": secrets[kek] for kek in ids},
    )


def store(db: Database, ring: Keyring, target: str, keys: KeySet) -> None:
    db.write(lambda conn: KeyRepository(conn, ring).store("omejdn", target, keys))


def load(db: Database, ring: Keyring, target: str) -> KeySet:
    return db.read(lambda conn: KeyRepository(conn, ring).load("omejdn", target))


def test_private_keys_are_sealed_and_public_parts_are_not(
    db: Database, plain_sql: PlainSQL
) -> None:
    ring = keyring("old")
    signer, public = generate_key("RS256"), generate_key("ES256").public()
    store(db, ring, "omejdn", KeySet([signer, public]))
    values = dict(plain_sql.rows("SELECT kid, value FROM keys WHERE type LIKE '%sk'"))
    assert values[signer.kid].startswith(PREFIX + "old$")
    assert "PRIVATE KEY" not in values[signer.kid]
    assert values[public.kid].startswith("-----BEGIN PUBLIC KEY-----")
    loaded = load(db, ring, "omejdn")
    assert loaded.to_jwks() == KeySet([signer, public]).to_jwks()
    assert OLD not in repr(ring)
    assert OLD not in str(ring.keys)


def test_a_sealed_value_copied_to_another_row_does_not_open(
    db: Database, plain_sql: PlainSQL
) -> None:
    ring = keyring("old")
    store(db, ring, "a", KeySet([generate_key("ES256")]))
    store(db, ring, "b", KeySet([generate_key("ES256")]))
    plain_sql.execute(
        "UPDATE keys SET value = (SELECT value FROM keys WHERE target = 'a') WHERE target = 'b'"
    )
    with pytest.raises(InvalidKeyMaterial, match=r"keys omejdn/b: key .* does not open") as caught:
        load(db, ring, "b")
    assert PREFIX not in str(caught.value)
    assert load(db, ring, "a")


def test_a_missing_or_wrong_key_encryption_key_is_named(db: Database) -> None:
    store(db, keyring("old"), "omejdn", KeySet([generate_key("ES256")]))
    with pytest.raises(
        InvalidKeyMaterial, match=r"sealed by key-encryption key 'old', which is not configured"
    ):
        load(db, keyring("new"), "omejdn")
    impostor = Keyring.from_settings([{"id": "old", "env": "X"}], {"X": NEW})
    with pytest.raises(InvalidKeyMaterial, match=r"key-encryption key 'old' does not open"):
        load(db, impostor, "omejdn")
    with pytest.raises(
        ConfigurationError, match=r"'old': environment variable KEK_MISSING is not set"
    ):
        Keyring.from_settings([{"id": "old", "env": "KEK_MISSING"}], {})
    short = base64.b64encode(b"short").decode()
    with pytest.raises(ConfigurationError, match=r"'old' .* must decode to 32 bytes") as caught:
        Keyring.from_settings([{"id": "old", "env": "K"}], {"K": short})
    assert short not in str(caught.value)


def test_the_first_key_seals_every_key_opens_and_rewrap_moves_everything(
    db: Database, plain_sql: PlainSQL
) -> None:
    plain = Keyring()
    store(db, plain, "legacy", KeySet([generate_key("ES256")]))  # written before sealing
    store(db, keyring("old"), "omejdn", KeySet([generate_key("RS256"), generate_key("ES384")]))
    both = keyring("new", "old")
    assert db.read(lambda conn: KeyRepository(conn, both).sealing_report()) == {
        "old": 2,
        "plaintext": 1,
    }
    before = {t: load(db, both, t).to_jwks() for t in ("legacy", "omejdn")}

    moved = db.write(lambda conn: KeyRepository(conn, both).rewrap())
    assert moved == {"old": 2, "plaintext": 1}
    assert db.read(lambda conn: KeyRepository(conn, both).sealing_report()) == {"new": 3}
    # After the re-wrap the old key can leave the configuration.
    only_new = keyring("new")
    assert {t: load(db, only_new, t).to_jwks() for t in ("legacy", "omejdn")} == before
    assert db.write(lambda conn: KeyRepository(conn, only_new).rewrap()) == {}
    kinds = {sealed_by(v) for (v,) in plain_sql.rows("SELECT value FROM keys")}
    assert kinds == {"new"}


REWRAP = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import event
    from omejdn_pg.postgres.database.unit_of_work import Database
    from omejdn_pg.postgres.repositories.keys import KeyRepository
    from omejdn_pg.sealing import Keyring
    from omejdn_pg.settings.connection import ConnectionSettings
    db = Database.connect(ConnectionSettings.from_url(sys.argv[1]))
    ring = Keyring.from_settings(
        [{"id": "new", "env": "KEK_NEW"}, {"id": "old", "env": "KEK_OLD"}]
    )
    updates = []
    @event.listens_for(db.engine, "before_cursor_execute")
    def slow(conn, cursor, statement, *args):
        if statement.startswith("UPDATE keys"):
            updates.append(1)
            if len(updates) == 3:
                print("halfway", flush=True)
                time.sleep(60)
    db.write(lambda conn: KeyRepository(conn, ring).rewrap())
    """
)


def test_a_rewrap_killed_halfway_loses_nothing(
    db: Database, database: ConnectionSettings, plain_sql: PlainSQL
) -> None:
    old = keyring("old")
    sets = {f"t{i}": KeySet([generate_key("ES256")]) for i in range(6)}
    for target, keys in sets.items():
        store(db, old, target, keys)
    env = dict(os.environ, KEK_NEW=NEW, KEK_OLD=OLD)
    process = subprocess.Popen(
        [sys.executable, "-c", REWRAP, database.conninfo()],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "halfway"
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.2)
    # The killed transaction rolled back: everything is still sealed by 'old' and opens.
    assert {sealed_by(v) for (v,) in plain_sql.rows("SELECT value FROM keys")} == {"old"}
    for target, keys in sets.items():
        assert load(db, old, target).to_jwks() == keys.to_jwks()


def test_key_encryption_settings_are_checked(tmp_path: Path) -> None:
    settings = parse_backend_section(
        {"key_encryption": [{"id": "a", "env": "KEK_A"}, {"id": "b", "file": "/etc/kek"}]}, "p.yml"
    )
    assert settings.key_encryption == ({"id": "a", "env": "KEK_A"}, {"id": "b", "file": "/etc/kek"})
    for bad in ({"id": "a"}, {"id": "a", "env": "X", "file": "Y"}, {"env": "X"}, "a"):
        with pytest.raises(
            ConfigurationError, match=r"p.yml: plugins.postgres_backend.key_encryption"
        ):
            parse_backend_section({"key_encryption": [bad]}, "p.yml")
    raw = tmp_path / "kek"
    raw.write_bytes(os.urandom(32))
    assert Keyring.from_settings([{"id": "f", "file": str(raw)}]).current is not None


def test_the_plugin_seals_what_keys_store_sends_and_keys_load_opens_it(
    database: ConnectionSettings,
    tmp_path: Path,
    plain_sql: PlainSQL,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from omejdn_pg import PluginLoader
    from omejdn_pg.host import events
    from omejdn_pg.service.host import Host
    from tests.kits.plugins import plugin_file

    monkeypatch.setenv("OMEJDN_PG_TEST_KEK", NEW)
    path = plugin_file(
        tmp_path / "plugins.yml",
        database,
        backend="      key_encryption: [{id: kek-1, env: OMEJDN_PG_TEST_KEK}]\n",
    )
    signer = generate_key("ES256")
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        loader.fire(
            events.KEYS_STORE,
            target_type="omejdn",
            target="omejdn",
            jwks=KeySet([signer]).to_jwks(),
        )
        (answer,) = loader.fire(events.KEYS_LOAD, target_type="omejdn", target="omejdn")
        assert answer == KeySet([signer]).to_jwks()
        assert Host(loader).keys.sealing_report() == {"kek-1": 1}
        assert "kek-1" in repr(loader.plugins["postgres_backend"].keyring)  # type: ignore[attr-defined]
    assert sealed_by(plain_sql.value("SELECT value FROM keys")) == "kek-1"
    monkeypatch.delenv("OMEJDN_PG_TEST_KEK")
    with pytest.raises(ConfigurationError, match="OMEJDN_PG_TEST_KEK is not set"):
        PluginLoader.from_files([path], base_dir=tmp_path)
