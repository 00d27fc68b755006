"""Plaintext passwords of an import are hashed on a bounded pool of threads, in order."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from omejdn_pg.errors import ConfigurationError
from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.service import transfer
from omejdn_pg.service.host import Host
from omejdn_pg.service.transfer.hashing import WORKERS_ENV, map_passwords, workers
from omejdn_pg.settings.backend import PasswordSettings

USERS = 12


def test_plaintext_users_are_hashed_on_several_threads_and_all_verify(
    tmp_path: Path, host: Host, plain_sql: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    entries = [
        {"username": f"user{i:02d}", "password": f"secret-{i}", "attributes": []}
        for i in range(USERS)
    ]
    (config / "users.yml").write_text(yaml.safe_dump(entries))
    policy = PasswordPolicy(PasswordSettings(bcrypt_rounds=6))
    threads: set[str] = set()
    original = policy.hash

    def hash_(password: str) -> str:
        threads.add(threading.current_thread().name)
        return original(password)

    monkeypatch.setattr(policy, "hash", hash_)
    monkeypatch.setenv(WORKERS_ENV, "3")
    transfer.import_deployment(tmp_path, host, policy=policy)

    assert len(threads) == 3, threads  # bounded: never more threads than asked for
    stored = dict(plain_sql.rows("SELECT username, password FROM users"))
    assert sorted(stored) == [entry["username"] for entry in entries]
    for i in range(USERS):
        user = host.users.find(f"user{i:02d}")
        assert user is not None
        assert host.users.verify_password(user, f"secret-{i}")
        assert f"secret-{i}" not in stored[user.username]
    # A second import verifies on the pool and changes nothing.
    assert transfer.import_deployment(tmp_path, host, policy=policy).changed == []


def test_the_pool_keeps_the_order_and_its_size_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def slow_square(n: int) -> int:
        time.sleep(0.001 * (n % 3))
        return n * n

    monkeypatch.setenv(WORKERS_ENV, "4")
    assert workers() == 4
    assert map_passwords(slow_square, list(range(50)), "squaring") == [n * n for n in range(50)]
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert map_passwords(slow_square, [3, 2], "squaring") == [9, 4]
    monkeypatch.delenv(WORKERS_ENV)
    assert workers() >= 1
    for bad in ("0", "two"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(ConfigurationError, match=WORKERS_ENV):
            workers()
