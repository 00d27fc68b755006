"""The read cache's parts that need no database: its setting, notices, keys and copies."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omejdn_pg.entities import User
from omejdn_pg.errors import ConfigurationError
from omejdn_pg.postgres.cache.changes import Chains, Link, Notice, encode_key
from omejdn_pg.postgres.cache.entries import affected, belongs
from omejdn_pg.postgres.cache.listener import LISTENER_APPLICATION_NAME, listener_connection
from omejdn_pg.postgres.cache.read_cache import Miss, ReadCache
from omejdn_pg.settings.backend import CacheSettings
from omejdn_pg.settings.connection import ConnectionSettings
from omejdn_pg.settings.reads import parse_cache
from omejdn_pg.settings.validation import parse_backend_section
from tests.kits.strategies import NO_NUL, PROPERTY_SETTINGS

WHERE = "plugins.yml: plugins.postgres_backend.cache"


def test_defaults_cache_configuration_and_keys_only() -> None:
    for absent in (None, True):
        settings = parse_cache(absent, WHERE)
        assert settings.groups == {"config", "keys"}
        assert (settings.max_entries, settings.max_staleness, settings.log_interval) == (
            10000,
            1.0,
            300.0,
        )
        assert settings.enabled
    assert parse_backend_section(None, "x").cache == CacheSettings()
    assert not parse_cache(False, WHERE).enabled


def test_every_switch_and_bound() -> None:
    settings = parse_cache(
        {
            "config": False,
            "keys": True,
            "client": True,
            "user": True,
            "max_entries": 50,
            "max_staleness": 0.25,
            "log_interval": "5m",
            "listen_connection": {"host": "db-primary", "port": 5433},
        },
        WHERE,
    )
    assert settings.groups == {"keys", "client", "user"}
    assert (settings.max_entries, settings.max_staleness, settings.log_interval) == (50, 0.25, 300)
    assert settings.listen_connection.params == {"host": "db-primary", "port": "5433"}
    assert not parse_cache({"max_entries": 0}, WHERE).enabled
    section = parse_backend_section({"cache": {"user": True}}, "plugins.yml")
    assert section.cache.groups == {"config", "keys", "user"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yes", "must be true, false or a mapping"),
        ({"clients": True}, r"unknown key\(s\) 'clients'; allowed: keys, config, client, user"),
        ({"user": "on"}, r"cache.user must be true or false"),
        ({"max_entries": 1.5}, "max_entries must be a whole number"),
        ({"max_entries": -1}, "max_entries must be a non-negative number"),
        ({"max_staleness": 0}, "max_staleness must be between 0.05 and 3600"),
        ({"max_staleness": 7200}, "max_staleness must be between"),
        ({"log_interval": "soon"}, "log_interval: 'soon' is not a duration"),
        ({"listen_connection": {"hots": "x"}}, "'hots' is not a libpq connection keyword"),
    ],
)
def test_a_wrong_setting_names_the_key(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_cache(value, WHERE)


def test_the_listener_connects_on_its_own_terms() -> None:
    main = ConnectionSettings({"host": "pgbouncer", "port": "6432", "password": "s3cret"})
    listen = listener_connection(main, parse_cache({"listen_connection": {"port": "5432"}}, WHERE))
    assert listen.params["host"] == "pgbouncer"
    assert listen.params["port"] == "5432"
    assert listen.params["application_name"] == LISTENER_APPLICATION_NAME
    assert listen.params["target_session_attrs"] == "read-write"
    assert "s3cret" not in repr(listen)
    named = listener_connection(
        main.with_params(application_name="omejdn", target_session_attrs="any"),
        parse_cache({"listen_connection": {"application_name": "mine"}}, WHERE),
    )
    assert named.params["application_name"] == "mine"
    assert named.params["target_session_attrs"] == "any"


def test_notices_parse_as_the_database_writes_them() -> None:
    assert Notice.parse("config:omejdn:4711/5/7:1700000000123") == Notice(
        "config", ("omejdn",), Link(4711, 5, 7), 1700000000123
    )
    assert Notice.parse("keys:clients/a%2Fb%3Ac%2A%25:12//3:5") == Notice(
        "keys", ("clients", "a/b:c*%"), Link(12, 0, 3), 5
    )
    assert Notice.parse("keys:omejdn/omejdn::1700000000000") == Notice(
        "keys", ("omejdn", "omejdn"), None, 1700000000000
    )
    assert Notice.parse("user:*:1/8/9:1") == Notice("user", None, Link(1, 8, 9), 1)
    for bad in ("", "config", "groups:x:1/1/1:1", "config:x:1/one/1:1", "config:x:7:1", "config:x"):
        assert Notice.parse(bad) is None


@PROPERTY_SETTINGS
@given(st.lists(st.text(NO_NUL, min_size=0, max_size=20), min_size=1, max_size=3))
def test_keys_survive_the_notice_format(parts: list[str]) -> None:
    encoded = encode_key(parts)
    assert ":" not in encoded
    assert encoded != "*"
    notice = Notice.parse(f"keys:{encoded}:1/1/2:2")
    assert notice is not None
    assert notice.key == tuple(parts)


def test_a_change_reaches_every_answer_it_alters() -> None:
    assert affected("config", ("omejdn",)) == [("config", "omejdn")]
    assert affected("user", ("alice",)) == [("user", "alice")]
    assert affected("keys", ("omejdn", "omejdn")) == [
        ("keys", "omejdn", "omejdn"),
        ("keys_all", "omejdn"),
    ]
    # A client carries its JWKS (key target clients/<id>), and the other way round.
    assert affected("keys", ("clients", "app")) == [
        ("keys", "clients", "app"),
        ("keys_all", "clients"),
        ("client", "app"),
    ]
    assert affected("client", ("app",)) == [
        ("client", "app"),
        ("keys", "clients", "app"),
        ("keys_all", "clients"),
    ]
    assert affected("keys", ("only-one-part",)) is None
    assert belongs(("client", "app"), "keys")
    assert belongs(("keys_all", "clients"), "client")
    assert not belongs(("keys_all", "omejdn"), "client")
    assert not belongs(("config", "omejdn"), "keys")


def _serving_cache(**settings: Any) -> ReadCache:
    """A cache that believes its listener just polled (no thread, no database)."""
    cache = ReadCache(CacheSettings(**settings), ConnectionSettings())
    counters = {(group, 1): (10, 0) for group in ("config", "keys", "client", "user")}
    cache.baseline(counters)
    cache.on_heartbeat(time.monotonic(), counters, [])
    return cache


def test_hits_are_copies_and_fills_lose_to_invalidations() -> None:
    cache = _serving_cache(groups=frozenset({"config", "user"}))
    miss = cache.get(("config", "omejdn"))
    assert isinstance(miss, Miss)
    cache.fill(("config", "omejdn"), {"scopes": ["openid"], "n": 1.5}, miss.token)
    first = cache.get(("config", "omejdn"))
    first["scopes"].append("profile")
    assert cache.get(("config", "omejdn")) == {"scopes": ["openid"], "n": 1.5}

    user = User("alice", "$2b$04$hash", {"email": "a@example.org"}, backend="postgres")
    miss = cache.get(("user", "alice"))
    assert isinstance(miss, Miss)
    cache.fill(("user", "alice"), user, miss.token)
    copy = cache.get(("user", "alice"))
    assert copy == user
    assert copy is not user

    # A read that started before an invalidation is not kept.
    miss = cache.get(("config", "other"))
    assert isinstance(miss, Miss)
    cache.invalidate("config", ("other",))
    cache.fill(("config", "other"), {"stale": True}, miss.token)
    assert isinstance(cache.get(("config", "other")), Miss)


def test_entries_are_bounded_least_recently_used_first() -> None:
    cache = _serving_cache(max_entries=2)
    for name in ("a", "b"):
        miss = cache.get(("config", name))
        assert isinstance(miss, Miss)
        cache.fill(("config", name), name, miss.token)
    assert cache.get(("config", "a")) == "a"  # b is now the least recently used
    miss = cache.get(("config", "c"))
    assert isinstance(miss, Miss)
    cache.fill(("config", "c"), "c", miss.token)
    assert isinstance(cache.get(("config", "b")), Miss)
    assert cache.stats()["evictions"] == 1
    assert cache.stats()["entries"] == 2


def test_a_notice_that_skips_a_counter_flushes_its_group() -> None:
    cache = _serving_cache()
    for name in ("a", "b"):
        miss = cache.get(("config", name))
        assert isinstance(miss, Miss)
        cache.fill(("config", name), name, miss.token)
    cache.on_notice("config:a:1/10/11:0")
    cache.on_notice("config:a:2//12:0")  # another writer's first change
    assert isinstance(cache.get(("config", "a")), Miss)
    assert cache.get(("config", "b")) == "b"
    cache.on_notice("config:a:1/14/15:0")  # writer 1 counted 14 without a notice
    assert isinstance(cache.get(("config", "b")), Miss)
    assert cache.stats()["gaps"] == 1


def test_a_poll_finds_what_the_chains_of_notices_do_not_reach() -> None:
    chains = Chains()
    chains.reset({("user", 1): 10, ("user", 2): 20})
    assert chains.heard("user", Link(1, 10, 11))
    assert chains.heard("user", Link(1, 11, 30))  # values jump: other rows drew in between
    assert chains.heard("user", Link(3, 0, 31))  # a new session's first change
    assert chains.behind({("user", 1): 30, ("user", 2): 20, ("user", 3): 31}) == set()
    # A row whose value the links do not reach, a new row never heard, a value going back.
    assert chains.behind({("user", 1): 32, ("user", 4): 33, ("user", 2): 19}) == {
        ("user", 1),
        ("user", 4),
        ("user", 2),
    }
    chains.advance({("user", 1): 30, ("user", 3): 31})
    assert chains.polled == {("user", 1): 30, ("user", 3): 31}  # row 2 was pruned
    assert not chains.heard("user", Link(1, 40, 41))  # 30 -> 40 never heard
    assert chains.heard("user", Link(2, 0, 42))  # the pruned session's new row
