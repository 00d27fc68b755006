"""Import and export of an Omejdn deployment directory, in-process through the host facade.

Results are checked with plain SQL and by reading the exported files back,
never only through the code under test.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from omejdn_pg.entities import KeySet, User
from omejdn_pg.errors import (
    AlreadyExists,
    InvalidKeyMaterial,
    InvalidSectionName,
    InvalidValue,
    StorageError,
    TransferError,
)
from omejdn_pg.host import events
from omejdn_pg.host.files.store import FileStore
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer import apply as applying
from omejdn_pg.settings.backend import PasswordSettings

# bcrypt cost 4 keeps the tests of plaintext passwords fast.
FAST_POLICY = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))


def counts(plain_sql: Any) -> tuple[int, int, int, int]:
    return (
        plain_sql.value("SELECT count(*) FROM users"),
        plain_sql.value("SELECT count(DISTINCT client_id) FROM clients"),
        plain_sql.value("SELECT count(*) FROM keys"),
        plain_sql.value("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'configuration\\_%'"),
    )


def sorted_by(items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: item[key])


def assert_same_deployment(left: Path, right: Path) -> None:
    """Same data: YAML compared as data, keys and certificates as key material."""
    a, b = FileStore(left), FileStore(right)
    assert a.sections() == b.sections()
    for section in a.sections():
        da, db = a.read_section(section), b.read_section(section)
        if section == "users":
            da, db = sorted_by(da, "username"), sorted_by(db, "username")
        elif section == "clients":
            da, db = sorted_by(da, "client_id"), sorted_by(db, "client_id")
        assert da == db, section
    assert a.key_targets() == b.key_targets()
    for target in a.key_targets():
        assert key_forms(a.load_keys(*target)) == key_forms(b.load_keys(*target)), target


def key_forms(keys: KeySet) -> dict[str, str]:
    """kid -> the whole JWK (private members, descriptor, chain): equal means same data."""
    return {key.kid: json.dumps(key.to_jwk(private=True), sort_keys=True) for key in keys}


def test_import_writes_everything_through_the_events(
    examples: Path, host: Host, plain_sql: Any
) -> None:
    report = transfer.import_deployment(examples, host)

    assert report.counts() == {
        "users": {"create": 4, "update": 0, "unchanged": 0},
        "clients": {"create": 5, "update": 0, "unchanged": 0},
        "config": {"create": 4, "update": 0, "unchanged": 0},
        # One multi-key target; the clients' keys come with the clients (their jwks).
        "keys": {"create": 1, "update": 0, "unchanged": 0},
    }
    # omejdn: RSA sk + certs, EC extra_sk; one certs row per client with a certificate.
    assert counts(plain_sql) == (4, 5, 5, 4)
    assert plain_sql.rows(
        "SELECT target, type FROM keys WHERE target_type = 'omejdn' ORDER BY position, type"
    ) == [("omejdn", "certs"), ("omejdn", "sk"), ("omejdn", "extra_sk")]
    hashed = plain_sql.value("SELECT password FROM users WHERE username = 'alice'")
    assert hashed.startswith("$2a$12$")
    alice = host.users.find("alice")
    assert alice is not None
    assert host.users.verify_password(alice, "alice-demo-password")
    assert plain_sql.value(
        "SELECT value FROM keys WHERE target_type = 'clients' AND target = 'reporting-service'"
    ).startswith("-----BEGIN CERTIFICATE-----")
    assert (
        plain_sql.value("SELECT value->>0 FROM configuration_scope_mapping WHERE key = 'email'")
        == "email"
    )
    client = host.clients.find("partner-connector")
    assert client is not None
    assert client.metadata["token_endpoint_auth_method"] == "tls_client_auth"
    assert host.clients.certificate(client) is not None


def test_second_import_changes_nothing(examples: Path, host: Host, plain_sql: Any) -> None:
    transfer.import_deployment(examples, host)
    before = plain_sql.rows("SELECT username, password FROM users ORDER BY username")

    report = transfer.import_deployment(examples, host)

    assert report.changed == []
    assert {kind: c["unchanged"] for kind, c in report.counts().items()} == {
        "users": 4,
        "clients": 5,
        "config": 4,
        "keys": 1,
    }
    assert plain_sql.rows("SELECT username, password FROM users ORDER BY username") == before


def test_only_differences_are_written(examples: Path, host: Host, plain_sql: Any) -> None:
    transfer.import_deployment(examples, host)
    users_file = examples / "config" / "users.yml"
    users = yaml.safe_load(users_file.read_text())
    users[1]["attributes"]["department"] = "management"
    users.append({"username": "dave", "password": FAST_POLICY.hash("pw"), "attributes": {}})
    # The file keeps each user's attribute order: order is data (it is stored and answered).
    users_file.write_text(yaml.safe_dump(users, sort_keys=False))
    webfinger = examples / "config" / "webfinger.yml"
    webfinger.write_text(yaml.safe_dump({"example.org": {}}))

    report = transfer.import_deployment(examples, host)

    assert [(c.kind, c.name, c.action.value) for c in report.changed] == [
        ("users", "alice", "update"),
        ("users", "dave", "create"),
        ("config", "webfinger", "update"),
    ]
    assert (
        plain_sql.value(
            "SELECT value #>> '{}' FROM attributes "
            "WHERE type = 'user' AND identifier = 'alice' AND key = 'department'"
        )
        == "management"
    )
    assert plain_sql.value("SELECT count(*) FROM configuration_webfinger") == 1


def test_dry_run_writes_nothing(examples: Path, host: Host, plain_sql: Any) -> None:
    report = transfer.import_deployment(examples, host, dry_run=True)

    assert len(report.changed) == 14
    assert counts(plain_sql) == (0, 0, 0, 0)


def test_import_is_all_or_nothing(
    examples: Path, host: Host, plain_sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure at the last change rolls back every earlier one."""
    original = transfer.plan_import

    def failing_plan(*args: Any, **kwargs: Any) -> list[transfer.Change]:
        plan = original(*args, **kwargs)

        def fail(_host: Host) -> None:
            raise StorageError("simulated failure")

        return [*plan, transfer.Change("keys", "x/y", transfer.Action.CREATE, fail)]

    monkeypatch.setattr(applying, "plan_import", failing_plan)
    with pytest.raises(StorageError, match="simulated"):
        transfer.import_deployment(examples, host)

    assert counts(plain_sql) == (0, 0, 0, 0)


def test_plaintext_passwords_are_hashed_once(tmp_path: Path, host: Host, plain_sql: Any) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "users.yml").write_text(
        yaml.safe_dump([{"username": "erin", "password": "plain-secret", "attributes": []}])
    )

    transfer.import_deployment(tmp_path, host, policy=FAST_POLICY)
    stored = plain_sql.value("SELECT password FROM users WHERE username = 'erin'")
    again = transfer.import_deployment(tmp_path, host, policy=FAST_POLICY)

    assert stored.startswith("$2b$04$")
    assert "plain-secret" not in stored
    assert again.changed == []
    assert plain_sql.value("SELECT password FROM users WHERE username = 'erin'") == stored
    erin = host.users.find("erin")
    assert erin is not None
    assert host.users.verify_password(erin, "plain-secret")


def test_passwords_are_hashed_and_verified_before_the_transaction(
    tmp_path: Path, host: Host, plain_sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bcrypt costs a quarter second per password: it must hold no pooled connection."""
    assert host.postgres is not None
    pool = host.postgres.database.engine.pool
    policy = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))
    held: list[tuple[str, int]] = []
    original_hash, original_verify = policy.hash, policy.verify

    def hash_(password: str) -> str:
        held.append(("hash", pool.checkedout()))  # type: ignore[attr-defined]
        return original_hash(password)

    def verify(password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        held.append(("verify", pool.checkedout()))  # type: ignore[attr-defined]
        return original_verify(password, stored_hash)

    monkeypatch.setattr(policy, "hash", hash_)
    monkeypatch.setattr(policy, "verify", verify)
    config = tmp_path / "config"
    config.mkdir()
    users = config / "users.yml"
    users.write_text(yaml.safe_dump([{"username": "erin", "password": "erin-secret"}]))
    transfer.import_deployment(tmp_path, host, policy=policy)
    users.write_text(
        yaml.safe_dump(
            [
                {"username": "erin", "password": "erin-secret"},
                {"username": "fred", "password": "fred-secret"},
            ]
        )
    )

    report = transfer.import_deployment(tmp_path, host, policy=policy)

    assert [c.name for c in report.changed] == ["fred"]
    assert held == [("hash", 0), ("verify", 0), ("hash", 0)]
    assert plain_sql.value("SELECT count(*) FROM users") == 2


def test_a_change_between_plan_and_writes_fails_the_import_whole(
    examples: Path, host: Host, plain_sql: Any
) -> None:
    def meanwhile(_changes: list[transfer.Change]) -> None:
        host.users.add(User(username="alice"))

    with pytest.raises(AlreadyExists, match="alice"):
        transfer.import_deployment(examples, host, on_plan=meanwhile)

    assert counts(plain_sql) == (1, 0, 0, 0)
    assert plain_sql.value("SELECT password FROM users WHERE username = 'alice'") is None


def test_list_form_attributes_are_accepted(tmp_path: Path, host: Host) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "clients.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "client_id": "old-style",
                    "token_endpoint_auth_method": "none",
                    "attributes": [{"key": "omejdn", "value": "admin"}],
                }
            ]
        )
    )

    transfer.import_deployment(tmp_path, host)

    client = host.clients.find("old-style")
    assert client is not None
    assert client.attributes == {"omejdn": "admin"}
    assert transfer.import_deployment(tmp_path, host).changed == []


def test_round_trip_holds_the_same_data(examples: Path, host: Host, tmp_path: Path) -> None:
    transfer.import_deployment(examples, host)
    out = tmp_path / "exported"

    report = transfer.export_deployment(host, out)

    assert report.counts()["users"]["create"] == 4
    assert_same_deployment(examples, out)
    for key_file in out.glob("keys/**/*.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, key_file


def test_export_refuses_a_non_empty_directory(host: Host, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "config").mkdir(parents=True)
    (out / "config" / "something.yml").write_text("x: 1\n")

    with pytest.raises(TransferError, match="not empty"):
        transfer.export_deployment(host, out)
    assert (out / "config" / "something.yml").exists()

    # --force replaces the directory whole: the stale file is gone.
    transfer.export_deployment(host, out, force=True)
    assert (out / "config" / "users.yml").exists()
    assert not (out / "config" / "something.yml").exists()


def test_export_reads_one_snapshot(examples: Path, host: Host) -> None:
    transfer.import_deployment(examples, host)
    snapshot = transfer.read_snapshot(host)

    assert sorted(u.username for u in snapshot.users) == ["admin", "alice", "bob", "carol"]
    assert set(snapshot.sections) == {"omejdn", "scope_mapping", "scope_description", "webfinger"}
    signing = snapshot.keys[("omejdn", "omejdn")]
    assert isinstance(signing, KeySet)
    assert [key.family for key in signing] == ["RSA", "EC-P-256"]
    assert all(key.is_private for key in signing)


@pytest.mark.parametrize(
    ("relative", "content", "error", "message"),
    [
        ("config/users.yml", "- username: a\n  attributes: {x: [1, 2}\n", InvalidValue, "line 2"),
        ("config/Bad-Name.yml", "a: 1\n", InvalidSectionName, "Bad-Name.yml"),
        ("config/omejdn.yml", "just a string\n", InvalidValue, "mapping or a list"),
        ("config/clients.yml", "- client_name: no id\n", InvalidValue, "entry 1"),
        ("config/users.yml", "- username: a\n- username: a\n", InvalidValue, "twice"),
        ("config/omejdn.yml", "born: 2001-02-03\n", InvalidValue, "omejdn.yml"),
        (
            "keys/omejdn/omejdn.key",
            "-----BEGIN PRIVATE KEY-----\nnope\n",
            InvalidKeyMaterial,
            "omejdn.key",
        ),
    ],
)
def test_bad_input_names_the_file_and_writes_nothing(
    examples: Path,
    host: Host,
    plain_sql: Any,
    relative: str,
    content: str,
    error: type[Exception],
    message: str,
) -> None:
    (examples / relative).write_text(content)

    with pytest.raises(error, match=message) as raised:
        transfer.import_deployment(examples, host)

    assert str(examples) in str(raised.value)
    assert counts(plain_sql) == (0, 0, 0, 0)


def test_a_missing_or_foreign_directory_is_refused(host: Host, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="no such directory"):
        transfer.import_deployment(tmp_path / "absent", host)
    with pytest.raises(TransferError, match="not an Omejdn deployment"):
        transfer.import_deployment(tmp_path, host)


def test_where_new_users_go_is_read_once_per_import(
    tmp_path: Path, host: Host, plain_sql: Any
) -> None:
    """Not one CONFIGURATION_LOAD of the omejdn section per created user or client."""
    config = tmp_path / "config"
    config.mkdir()
    hashed = FAST_POLICY.hash("pw")
    (config / "users.yml").write_text(
        yaml.safe_dump([{"username": f"u{i}", "password": hashed} for i in range(30)])
    )
    (config / "clients.yml").write_text(yaml.safe_dump([{"client_id": f"c{i}"} for i in range(30)]))
    loads: list[str] = []
    host.loader.register(events.CONFIGURATION_LOAD, lambda section, **_: loads.append(section))

    transfer.import_deployment(tmp_path, host, policy=FAST_POLICY)

    assert loads.count("omejdn") == 2  # users, clients
    assert plain_sql.value("SELECT count(*) FROM users") == 30
    assert plain_sql.value("SELECT count(DISTINCT client_id) FROM clients") == 30


def test_a_deployment_written_as_json_is_read_without_the_yaml_parser(tmp_path: Path) -> None:
    """One JSON value per line, as generated users.yml files are: the JSON parser reads
    it, and the import does not pay for importing PyYAML."""
    config = tmp_path / "config"
    config.mkdir()
    users = [{"username": f"u{i}", "attributes": {"n": i, "ok": True}} for i in range(3)]
    (config / "users.yml").write_text("".join(f"- {json.dumps(u)}\n" for u in users))
    code = (
        "import sys; from pathlib import Path; from omejdn_pg.service import transfer; "
        f"found = transfer.read_deployment(Path({str(tmp_path)!r})); "
        "print(len(found.users), 'yaml' in sys.modules)"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.stdout.split() == ["3", "False"], result.stderr
