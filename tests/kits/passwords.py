"""Password hashes the tests store, as Omejdn writes them."""

from __future__ import annotations

import bcrypt

from omejdn_pg.passwords import PasswordPolicy
from omejdn_pg.settings.backend import PasswordSettings

# Omejdn's own seed users carry this bcrypt hash (cost 12) of "mypassword".
OMEJDN_HASH = "$2a$12$s1UhO7bRO9b5fTTiRE4KxOR88vz3462Bxn8DGh/iDX26Neh95AHrC"


def bcrypt_hash(password: str, rounds: int = 4, prefix: str = "2b") -> str:
    """A hash made by the bcrypt library itself, not by the code under test."""
    ident = b"2a" if prefix == "2a" else b"2b"
    made = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds, prefix=ident)).decode()
    # $2y$ (PHP's name) is the same algorithm as $2b$; bcrypt cannot emit it.
    return f"${prefix}${made[4:]}" if prefix == "2y" else made


def costly_argon2(memory: int = 1024 * 1024, time: int = 3, lanes: int = 4) -> str:
    """A well-formed argon2 hash with its cost edited (computing one for real would
    take the seconds and the memory the bound is there to spare)."""
    made = PasswordPolicy(PasswordSettings(scheme="argon2")).hash("mypassword")
    assert "$m=65536,t=3,p=4$" in made
    return made.replace("$m=65536,t=3,p=4$", f"$m={memory},t={time},p={lanes}$")
