"""Password hashes: Omejdn's bcrypt verified, new ones at the configured cost, what counts as a
hash; the policy alone, no database (through UserRepository: postgres/test_stored_passwords.py).
"""

from __future__ import annotations

import warnings
from typing import Any

import bcrypt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from passlib.context import CryptContext

from omejdn_pg.entities import User
from omejdn_pg.errors import PasswordRejected
from omejdn_pg.passwords import BCRYPT_MAX_BYTES, PasswordPolicy
from omejdn_pg.settings.backend import PasswordSettings
from tests.kits.passwords import OMEJDN_HASH, bcrypt_hash, costly_argon2

FAST = PasswordPolicy(PasswordSettings(bcrypt_rounds=4))
ARGON2 = PasswordPolicy(PasswordSettings(scheme="argon2", bcrypt_rounds=4))


def test_omejdns_own_hash_verifies() -> None:
    policy = PasswordPolicy()  # the production cost, as Omejdn's hash has
    assert policy.is_hash(OMEJDN_HASH)
    assert policy.verify("mypassword", OMEJDN_HASH) == (True, None)
    assert policy.verify("mypassword ", OMEJDN_HASH) == (False, None)
    assert policy.verify("", OMEJDN_HASH) == (False, None)


@pytest.mark.parametrize("prefix", ["2a", "2b", "2y"])
def test_every_bcrypt_variant_verifies(prefix: str) -> None:
    stored = bcrypt_hash("s3cret", prefix=prefix)
    assert stored.startswith(f"${prefix}$04$")
    assert FAST.is_hash(stored)
    assert FAST.verify("s3cret", stored) == (True, None)
    assert FAST.verify("S3cret", stored) == (False, None)


@pytest.mark.parametrize("rounds", [4, 5])
def test_new_hashes_are_bcrypt_at_the_configured_cost(rounds: int) -> None:
    policy = PasswordPolicy(PasswordSettings(bcrypt_rounds=rounds))
    new_hash = policy.hash("s3cret")
    assert new_hash.startswith(f"$2b${rounds:02}$")
    assert bcrypt.checkpw(b"s3cret", new_hash.encode())  # readable by any bcrypt, Ruby's too
    assert "s3cret" not in new_hash


def test_default_policy_is_bcrypt_at_omejdns_cost() -> None:
    assert PasswordSettings().scheme == "bcrypt"
    assert PasswordSettings().bcrypt_rounds == 12
    assert not PasswordPolicy().needs_update(OMEJDN_HASH)


def test_argon2_as_configured_scheme() -> None:
    new_hash = ARGON2.hash("s3cret")
    assert new_hash.startswith("$argon2")
    assert ARGON2.verify("s3cret", new_hash) == (True, None)
    assert ARGON2.verify("wrong", new_hash) == (False, None)
    assert ARGON2.needs_update(OMEJDN_HASH)


def test_a_costlier_bcrypt_hash_is_not_downgraded() -> None:
    # Omejdn's cost 12 under a configured cost 4: keep it, never "upgrade" down.
    assert FAST.verify("mypassword", OMEJDN_HASH) == (True, None)
    assert not FAST.needs_update(bcrypt_hash("pw", rounds=6))


def test_a_cheaper_bcrypt_hash_needs_update() -> None:
    policy = PasswordPolicy(PasswordSettings(bcrypt_rounds=5))
    matches, replacement = policy.verify("pw", bcrypt_hash("pw", rounds=4))
    assert matches
    assert replacement is not None
    assert replacement.startswith("$2b$05$")


@pytest.mark.parametrize(
    "not_a_hash",
    ["", "mypassword", "$2b$hunter2", "$2a$12$tooshort", "$argon2id$plain", OMEJDN_HASH + "x"],
)
def test_plaintext_and_malformed_hashes_are_not_hashes(not_a_hash: str) -> None:
    assert not FAST.is_hash(not_a_hash)
    assert FAST.verify(not_a_hash, not_a_hash) == (False, None)


_PARSER = CryptContext(schemes=["bcrypt", "argon2"])
_BCRYPT64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def parsed_as_hash(value: str) -> bool:
    """The reference: passlib identifies the scheme and parses the whole string."""
    handler = _PARSER.identify(value, required=False, resolve=True)
    if handler is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # passlib warns about (and repairs) padding bits
        try:
            handler.from_string(value)
        except (ValueError, TypeError, NotImplementedError):
            return False
    return True


def near_bcrypt() -> st.SearchStrategy[str]:
    """Strings shaped like bcrypt hashes, and every way of getting one part wrong."""
    ident = st.sampled_from(["$2$", "$2a$", "$2b$", "$2y$", "$2x$", "$2c$", "$2", "$2b", "$3a$"])
    cost = st.one_of(
        st.integers(0, 40).map(lambda n: f"{n:02d}"),
        st.integers(0, 40).map(str),
        st.sampled_from(["", " 4", "+4", "1_2", "\u0661\u0662", "12 ", "4a"]),
    )
    alphabet = st.one_of(st.sampled_from(_BCRYPT64), st.sampled_from("$+-_=\n \x00\u00e9\u0661"))
    body = st.one_of(
        st.text(st.sampled_from(_BCRYPT64), min_size=0, max_size=60),
        st.text(alphabet, min_size=20, max_size=56),
        st.builds(
            lambda salt, checksum: salt + checksum,
            st.text(st.sampled_from(_BCRYPT64), min_size=22, max_size=22),
            st.sampled_from(["", "\n", "$"])
            | st.text(st.sampled_from(_BCRYPT64), min_size=30, max_size=32),
        ),
    )
    return st.builds(lambda i, c, b: f"{i}{c}${b}", ident, cost, body)


def near_argon2() -> st.SearchStrategy[str]:
    head = st.sampled_from(["$argon2id$", "$argon2i$", "$argon2d$", "$argon2x$", "$argon2"])
    params = st.sampled_from(
        ["v=19$m=65536,t=3,p=4$", "m=512,t=2,p=2$", "v=19$m=8,t=1,p=1,keyid=abc$", "m=1,t=1$"]
    )
    tail = st.text(st.sampled_from(_BCRYPT64 + "+$"), max_size=60)
    return st.builds(lambda h, p, t: h + p + t, head, params, tail)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(near_bcrypt(), near_argon2(), st.text(max_size=80)))
@example(OMEJDN_HASH)
@example(OMEJDN_HASH[:29])  # a salt without its checksum: passlib parses it
@example("$2$04$" + "a" * 53)
@example("$2b$04$" + "a" * 21 + "b" + "c" * 31)  # padding bits set: repaired, accepted
@example(OMEJDN_HASH + "\n")
@example(bcrypt_hash("pw"))
@example("$argon2id$v=19$m=8,t=1,p=1,keyid=abc$c2FsdHNhbHQ$aGFzaGhhc2g")
def test_is_hash_accepts_exactly_what_passlib_parses(value: str) -> None:
    for policy in (FAST, ARGON2):
        assert policy.is_hash(value) is parsed_as_hash(value), value


def test_is_hash_knows_argon2_hashes() -> None:
    assert ARGON2.is_hash(ARGON2.hash("pw"))
    assert FAST.is_hash(ARGON2.hash("pw"))


def test_no_hash_never_verifies() -> None:
    assert FAST.verify("", None) == (False, None)
    assert FAST.verify("pw", None) == (False, None)


@pytest.mark.parametrize("password", ["", None, 42])
def test_hashing_refuses_empty_and_non_strings(password: Any) -> None:
    with pytest.raises(PasswordRejected, match="non-empty string"):
        FAST.hash(password)


LONG = "ä" * 36 + "tail"  # 72 bytes of UTF-8, then more


def test_bcrypt_refuses_to_hash_more_than_72_bytes_without_quoting_it() -> None:
    assert len(LONG.encode()) > BCRYPT_MAX_BYTES
    with pytest.raises(PasswordRejected, match="longer than 72 bytes") as error:
        FAST.hash(LONG)
    assert LONG not in str(error.value)
    # exactly 72 bytes is fine
    exact = "ä" * 36
    assert FAST.verify(exact, FAST.hash(exact)) == (True, None)


def test_a_long_password_never_matches_the_hash_of_its_first_72_bytes() -> None:
    prefix = LONG.encode()[:BCRYPT_MAX_BYTES]
    stored = bcrypt.hashpw(prefix, bcrypt.gensalt(4)).decode()
    assert bcrypt.checkpw(prefix, stored.encode())
    assert FAST.verify(prefix.decode(), stored) == (True, None)
    assert FAST.verify(LONG, stored) == (False, None)
    assert ARGON2.verify(LONG, stored) == (False, None)


def test_argon2_hashes_long_passwords_whole() -> None:
    stored = ARGON2.hash(LONG)
    assert ARGON2.verify(LONG, stored) == (True, None)
    assert ARGON2.verify(LONG[:-1], stored) == (False, None)
    # Switching back to bcrypt must not re-hash it into a truncated bcrypt hash.
    assert FAST.verify(LONG, stored) == (True, None)


@pytest.mark.parametrize(
    ("memory", "time", "lanes", "said"),
    [
        (1024 * 1024, 3, 4, "memory (KiB) 1048576 above 262144"),
        (4194304, 1000, 1, "memory (KiB) 4194304 above 262144, time 1000 above 10"),
        (65536, 3, 64, "parallelism 64 above 16"),
    ],
)
def test_an_argon2_hash_above_the_bounds_is_refused_when_it_comes_in(
    memory: int, time: int, lanes: int, said: str
) -> None:
    costly = costly_argon2(memory, time, lanes)
    with pytest.raises(PasswordRejected) as caught:
        User.from_dict({"username": "mallory", "password": costly})
    assert f"user 'mallory': an argon2 hash of {said} is refused" in str(caught.value)
    assert costly not in str(caught.value)
