"""Password hashing: one CryptContext for verifying Omejdn's hashes and making new ones.

Omejdn (Ruby) stores bcrypt hashes (``$2a$12$...``); we verify those and, by
default, hash new passwords with bcrypt too, so a database stays readable by a
Ruby Omejdn. A deployment may configure argon2 instead; bcrypt hashes then
count as deprecated and are replaced on the user's next successful login, as
are bcrypt hashes of a lower cost than the configured one.

bcrypt only looks at the first 72 bytes of a password. Rather than truncate
silently — which would let in any password sharing those 72 bytes — a longer
password is refused when hashing with bcrypt (PasswordRejected) and never
matches a bcrypt hash when verifying. Argon2 has no such limit.

A hash's cost is the attacker's lever too: one bcrypt hash of cost 31 takes
days to verify, so a hash imported with it would turn every login of that
user into a denial of service. Hashes above :data:`MAX_BCRYPT_COST` are
refused where they come in (``string_to_pass_hash``, i.e. Omejdn's YAML form,
and a user written through the events) and never verified (a login against one
fails at once, and the log says why, never showing the hash). Argon2's cost
has three levers, each bounded (:data:`MAX_ARGON2_MEMORY_KIB`,
:data:`MAX_ARGON2_TIME`, :data:`MAX_ARGON2_PARALLELISM`) so that the costliest
hash allowed takes about as long as the costliest bcrypt hash allowed: a
stored ``m=1GiB,t=3`` hash made every failed login take 5 s and 1 GiB.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Final

from passlib.context import CryptContext
from passlib.exc import MissingBackendError

from omejdn_pg.errors import PasswordRejected
from omejdn_pg.settings.backend import PasswordSettings

log = logging.getLogger(__name__)

BCRYPT_MAX_BYTES: Final = 72
MAX_BCRYPT_COST: Final = 16
"""Omejdn hashes at 12; 16 already takes seconds per verify."""
MAX_ARGON2_MEMORY_KIB: Final = 256 * 1024
"""256 MiB per verify: four times the default (64 MiB, RFC 9106's second recommendation)."""
MAX_ARGON2_TIME: Final = 10
"""Passes; the default is 3. 256 MiB times 10 passes takes about as long as bcrypt cost 16."""
MAX_ARGON2_PARALLELISM: Final = 16
"""Lanes, each a thread while verifying; the default is 4."""
_ARGON2_COST: Final = re.compile(r"\$argon2(?:id|i|d)\$(?:v=\d+\$)?m=(\d+),t=(\d+),p=(\d+)[$,]")
_BCRYPT_PREFIXES: Final = ("$2a$", "$2b$", "$2y$")
_BCRYPT_HASH: Final = re.compile(
    r"\$2[aby]?\$(?:0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{22}(?:[./A-Za-z0-9]{31})?"
)
"""What passlib's bcrypt parser accepts (``$2$``, ``$2a$``, ``$2b$``, ``$2y$``; cost 04-31
as two digits; 22 salt characters; an optional 31-character checksum), as one match."""


class PasswordPolicy:
    """Hashes and verifies passwords under one configured policy."""

    def __init__(self, settings: PasswordSettings | None = None) -> None:
        self.settings = settings or PasswordSettings()
        default = self.settings.scheme
        self._context = CryptContext(
            schemes=[default] + [s for s in ("bcrypt", "argon2") if s != default],
            default=default,
            deprecated=["auto"],
            # Not ``bcrypt__rounds``: passlib reads it as min, max and default at
            # once, and would "upgrade" a costlier hash (Omejdn's cost 12 under a
            # configured 10) down to the configured cost.
            bcrypt__default_rounds=self.settings.bcrypt_rounds,
            bcrypt__min_rounds=self.settings.bcrypt_rounds,
        )

    def __repr__(self) -> str:
        settings = self.settings
        return f"PasswordPolicy(scheme={settings.scheme!r}, bcrypt_rounds={settings.bcrypt_rounds})"

    def hash(self, password: str) -> str:
        """A new hash of ``password`` under the policy's scheme."""
        if not isinstance(password, str) or not password:
            raise PasswordRejected("a password must be a non-empty string")
        if self.settings.scheme == "bcrypt" and _too_long_for_bcrypt(password):
            raise PasswordRejected(
                f"passwords longer than {BCRYPT_MAX_BYTES} bytes cannot be hashed with bcrypt "
                "without truncating them; use a shorter one or configure the argon2 scheme"
            )
        try:
            new_hash: str = self._context.hash(password)
        except MissingBackendError as exc:
            raise PasswordRejected(
                f"the {self.settings.scheme} scheme is not installed "
                "(pip install omejdn-pg[argon2])"
            ) from exc
        return new_hash

    def is_hash(self, value: str | None) -> bool:
        """Whether ``value`` is a well-formed hash this policy can verify (as opposed to plaintext).

        The whole string is parsed, not just its prefix: a plaintext password
        that happens to start with ``$2b$`` must not be stored as if it were a hash.
        """
        if not isinstance(value, str) or not value:
            return False
        if value.startswith("$2"):
            # Every bcrypt form starts so, and no other scheme's does. passlib's parse
            # costs ~10 us, a third of an import's time per user; this match, a
            # fraction of one, accepts exactly what it accepts (a property test holds
            # the two equal).
            return _BCRYPT_HASH.fullmatch(value) is not None
        if not value.startswith("$argon2"):
            return False
        handler = self._context.identify(value, required=False, resolve=True)
        if handler is None:
            return False
        try:
            # Parsing checks the structure (salt, cost, checksum length and
            # alphabet) without the cost of hashing anything.
            handler.from_string(value)
        except (ValueError, TypeError, NotImplementedError):
            # NotImplementedError: passlib's answer to an argon2 ``keyid``, which is
            # no hash we can verify either.
            return False
        return True

    def needs_update(self, stored_hash: str) -> bool:
        """Whether ``stored_hash`` is weaker than the policy (other scheme, lower cost)."""
        return bool(self._context.needs_update(stored_hash))

    def verify(self, password: str, stored_hash: str | None) -> tuple[bool, str | None]:
        """``(matches, replacement_hash)``; the replacement is set when the
        password matched and the stored hash is weaker than the policy."""
        if not stored_hash or not isinstance(password, str) or not self.is_hash(stored_hash):
            return False, None
        if stored_hash.startswith(_BCRYPT_PREFIXES) and _too_long_for_bcrypt(password):
            return False, None
        refusal = cost_refusal(stored_hash)
        if refusal is not None:
            # Logged without the hash or the user: the caller knows whom it asked about.
            log.warning("password not verified: the stored hash is refused: %s", refusal)
            return False, None
        try:
            if self.settings.scheme == "bcrypt" and _too_long_for_bcrypt(password):
                # The replacement would be a bcrypt hash, which cannot hold this
                # password whole (and bcrypt >= 5 raises trying): verify only,
                # keep the stored (argon2) hash.
                return bool(self._context.verify(password, stored_hash)), None
            matches, replacement = self._context.verify_and_update(password, stored_hash)
        except MissingBackendError as exc:
            raise PasswordRejected(
                "a stored hash needs a scheme that is not installed (pip install omejdn-pg[argon2])"
            ) from exc
        except ValueError:
            # A malformed hash, not a wrong password: fail closed.
            return False, None
        return bool(matches), replacement


def describe_hash(value: str | None) -> str:
    """The scheme and cost of a stored hash, never the hash: ``bcrypt cost 12``,
    ``argon2id``, ``none`` or ``unknown``."""
    if not value:
        return "none"
    if value.startswith(_BCRYPT_PREFIXES):
        cost = bcrypt_cost(value)
        return f"bcrypt cost {cost}" if cost is not None else "unknown"
    if value.startswith(("$argon2id$", "$argon2i$", "$argon2d$")):
        scheme = value.split("$")[1]
        argon = argon2_cost(value)
        return f"{scheme} m={argon[0]} t={argon[1]} p={argon[2]}" if argon is not None else scheme
    return "unknown"


def bcrypt_cost(value: str) -> int | None:
    parts = value.split("$")
    if len(parts) >= 4 and value.startswith(_BCRYPT_PREFIXES) and parts[2].isdigit():
        return int(parts[2])
    return None


def argon2_cost(value: str) -> tuple[int, int, int] | None:
    """``(memory KiB, time, parallelism)`` of an argon2 hash, or None."""
    found = _ARGON2_COST.match(value)
    if found is None:
        return None
    memory, time, lanes = found.groups()
    return int(memory), int(time), int(lanes)


def cost_refusal(value: str) -> str | None:
    """Why a hash costs too much to be verified (never quoting it), or None."""
    cost = bcrypt_cost(value)
    if cost is not None and cost > MAX_BCRYPT_COST:
        return (
            f"a bcrypt hash of cost {cost} is refused: above {MAX_BCRYPT_COST}, "
            "each login would cost the server seconds to minutes"
        )
    argon = argon2_cost(value)
    if argon is None:
        return None
    over = [
        f"{name} {given} above {bound}"
        for name, given, bound in zip(
            ("memory (KiB)", "time", "parallelism"),
            argon,
            (MAX_ARGON2_MEMORY_KIB, MAX_ARGON2_TIME, MAX_ARGON2_PARALLELISM),
            strict=True,
        )
        if given > bound
    ]
    if not over:
        return None
    return (
        f"an argon2 hash of {', '.join(over)} is refused: each login would cost the "
        "server seconds and that memory"
    )


def too_costly(value: str) -> bool:
    return cost_refusal(value) is not None


def _too_long_for_bcrypt(password: str) -> bool:
    return len(password.encode("utf-8")) > BCRYPT_MAX_BYTES


@cache
def default_policy() -> PasswordPolicy:
    return PasswordPolicy()


def string_to_pass_hash(value: str, policy: PasswordPolicy | None = None) -> str:
    """Omejdn's ``string_to_pass_hash``: keep an existing hash, hash plaintext."""
    policy = policy or default_policy()
    if not policy.is_hash(value):
        return policy.hash(value)
    refusal = cost_refusal(value)
    if refusal is not None:
        raise PasswordRejected(refusal)
    return value
