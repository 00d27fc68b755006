"""Password hygiene: a report that never shows a hash, cost limits, external users."""

from __future__ import annotations

import time

import bcrypt
import pytest

from omejdn_pg import User
from omejdn_pg.errors import PasswordRejected
from omejdn_pg.passwords import MAX_BCRYPT_COST, PasswordPolicy, describe_hash
from omejdn_pg.service.host import Host
from omejdn_pg.settings.backend import PasswordSettings
from tests.kits.passwords import OMEJDN_HASH
from tests.kits.witness import PlainSQL

# A well-formed bcrypt hash of cost 31 (made by editing the cost field: verifying it
# for real would take days, which is the point of the limit).
COST_31 = OMEJDN_HASH.replace("$2a$12$", "$2a$31$")


def test_a_hash_above_the_cost_limit_is_refused_when_it_comes_in() -> None:
    with pytest.raises(PasswordRejected, match=r"user 'mallory': a bcrypt hash of cost 31"):
        User.from_dict({"username": "mallory", "password": COST_31})
    assert User.from_dict({"username": "alice", "password": OMEJDN_HASH}).password == OMEJDN_HASH


def test_a_login_against_a_too_costly_hash_fails_at_once(
    plugin_host: Host, plain_sql: PlainSQL
) -> None:
    plugin_host.users.add(User(username="mallory", password=OMEJDN_HASH))
    plain_sql.execute("UPDATE users SET password = %s", (COST_31,))
    mallory = plugin_host.users.find("mallory")
    assert mallory is not None
    started = time.monotonic()
    assert not plugin_host.users.verify_password(mallory, "mypassword")
    assert time.monotonic() - started < 1


def test_the_hash_report_counts_schemes_and_costs_and_never_shows_one(plugin_host: Host) -> None:
    cheap = bcrypt.hashpw(b"x", bcrypt.gensalt(4)).decode()
    plugin_host.users.add(User(username="alice", password=OMEJDN_HASH))
    plugin_host.users.add(User(username="bob", password=cheap))
    plugin_host.users.add(User(username="carol", extern=True))
    report = plugin_host.users.hash_report(PasswordPolicy(PasswordSettings(bcrypt_rounds=12)))
    assert report.kinds == {"bcrypt cost 12": 1, "bcrypt cost 4": 1, "none": 1}
    assert report.upgrading == 1  # bob's cost-4 hash is replaced at his next login
    assert report.total == 3
    assert OMEJDN_HASH not in repr(report)
    argon = plugin_host.users.hash_report(PasswordPolicy(PasswordSettings(scheme="argon2")))
    assert argon.upgrading == 2
    assert describe_hash(COST_31) == "bcrypt cost 31"
    assert MAX_BCRYPT_COST == 16


def test_extern_true_round_trips(plugin_host: Host, plain_sql: PlainSQL) -> None:
    plugin_host.users.add(User.from_dict({"username": "fed", "extern": True}))
    assert plain_sql.value("SELECT extern FROM users") == "true"
    found = plugin_host.users.find("fed")
    assert found is not None
    assert found.extern is True
    assert User.from_dict({"username": "x", "extern": False}).extern is None
