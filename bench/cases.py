"""The cases: each storage event as Omejdn's core fires it, beside its floor.

One small function per case, as in SQLAlchemy's ``examples/performance/``:
``ours`` fires the event through the loader exactly as the core does (the
context names are the core's binding variables), ``floor`` replays the SQL
that very event sent (see :mod:`bench.floor`), and GET_ALL adds the Ruby
plugin's way of listing — one query for the rows, then one attributes query
per user or client. Point reads rotate over many keys, the same sequence on
both sides, so neither side is timed on one hot row alone.

Every case checks once that both sides really return what they should (a
user, the right number of rows), so a broken case fails instead of timing
nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bcrypt
from sqlalchemy import Engine

from bench import seed
from bench.floor import Floor, Statement, capture, round_trips
from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus
from omejdn_pg.keys.key_set import KeySet

Call = Callable[[], object]


@dataclass
class Case:
    """One row of the latency table."""

    name: str
    group: str
    """``point read``, ``composite``, ``write`` or ``listing``."""
    ours: Call
    floor: Call
    statements: int
    """Statements the package sent for one call (the floor sends the same)."""
    share: float = 1.0
    """Calls as a fraction of ``--repeat`` (listings are slow, writes slower than reads)."""
    n_plus_1: Call | None = None
    note: str = ""
    sql: list[str] = field(default_factory=list)
    round_trips: tuple[int, int] | None = None
    """Waits for the server in one call of ``ours`` and of ``floor`` (writes)."""


def first(answers: Iterable[Any]) -> Any:
    """The host's reading of an event's answers: the first that is not None."""
    return next((answer for answer in answers if answer is not None), None)


class Cases:
    """Builds the cases over one seeded database."""

    def __init__(
        self,
        loader: EventBus,
        engine: Engine,
        floor: Floor,
        users: int,
        signing_keys: KeySet,
    ) -> None:
        self.loader = loader
        self.engine = engine
        self.floor = floor
        self.users = users
        self.signing_keys = signing_keys
        step = max(1, users // 1000)
        self.user_indexes = list(range(0, users, step))[:1000]
        self.user_names = [seed.username(i) for i in self.user_indexes]
        self.client_ids = [seed.client_id(i) for i in range(seed.CLIENT_COUNT)]

    # --- capturing -----------------------------------------------------------------

    def _steady(self, call: Call, warmup: int = 3) -> list[Statement]:
        """The statements of one call after ``warmup`` calls (prepared, caches filled)."""
        for _ in range(warmup):
            call()
        return capture(self.engine, call)

    def _rotated(
        self, fire: Callable[[str], list[Any]], keys: Sequence[str]
    ) -> tuple[Call, list[tuple[Statement, ...]], list[Statement]]:
        """``ours`` cycling over ``keys``, and the floor's statements for each key."""
        captured = self._steady(lambda: fire(keys[0]))
        per_key = [tuple(s.substitute(keys[0], key) for s in captured) for key in keys]
        names = itertools.cycle(keys)
        return (lambda: fire(next(names))), per_key, captured

    def _cycling_floor(self, per_key: Sequence[tuple[Statement, ...]]) -> Call:
        statements = itertools.cycle(per_key)
        execute = self.floor.execute
        return lambda: execute(next(statements))

    # --- the events ----------------------------------------------------------------

    def fire_user_get(self, name: str) -> list[Any]:
        return self.loader.fire(events.USER_GET, username=name)

    def fire_client_get(self, client_id: str) -> list[Any]:
        return self.loader.fire(events.CLIENT_GET, client_id=client_id)

    def fire_keys_load(self) -> list[Any]:
        target_type, target = seed.SIGNING_TARGET
        return self.loader.fire(
            events.KEYS_LOAD, target_type=target_type, target=target, create=True
        )

    def fire_configuration_load(self) -> list[Any]:
        return self.loader.fire(events.CONFIGURATION_LOAD, section="omejdn", fallback={})

    # --- point reads ---------------------------------------------------------------

    def user_get_statements(self) -> list[tuple[Statement, ...]]:
        """USER_GET's floor statements for each of :attr:`user_names`."""
        return self._rotated(self.fire_user_get, self.user_names)[1]

    def user_get(self) -> Case:
        names = self.user_names
        ours, per_key, captured = self._rotated(self.fire_user_get, names)
        self._check_found(self.fire_user_get(names[-1]), per_key[-1], "USER_GET")
        return Case(
            "USER_GET",
            "point read",
            ours,
            self._cycling_floor(per_key),
            len(captured),
            note=f"rotating over {len(names)} users",
            sql=[s.sql for s in captured],
        )

    def client_get(self) -> Case:
        ours, per_key, captured = self._rotated(self.fire_client_get, self.client_ids)
        self._check_found(self.fire_client_get(self.client_ids[-1]), per_key[-1], "CLIENT_GET")
        return Case(
            "CLIENT_GET",
            "point read",
            ours,
            self._cycling_floor(per_key),
            len(captured),
            note=f"rotating over {len(self.client_ids)} clients, every {seed.JWKS_EVERY}th "
            "with a JWKS",
            sql=[s.sql for s in captured],
        )

    def keys_load(self) -> Case:
        captured = self._steady(self.fire_keys_load)
        answer = first(self.fire_keys_load())
        if not isinstance(answer, dict) or len(answer.get("keys", ())) != 2:
            raise AssertionError(f"KEYS_LOAD answered {answer!r:.80}")
        self._check_rows(captured, "KEYS_LOAD")
        return Case(
            "KEYS_LOAD",
            "point read",
            self.fire_keys_load,
            self.floor.read(captured),
            len(captured),
            note="omejdn/omejdn: 2 RS256 keys (active + next) as a JWK Set",
            sql=[s.sql for s in captured],
        )

    def configuration_load(self) -> Case:
        captured = self._steady(self.fire_configuration_load)
        if first(self.fire_configuration_load()) != seed.OMEJDN_SECTION:
            raise AssertionError("CONFIGURATION_LOAD did not return the seeded omejdn section")
        self._check_rows(captured, "CONFIGURATION_LOAD")
        return Case(
            "CONFIGURATION_LOAD",
            "point read",
            self.fire_configuration_load,
            self.floor.read(captured),
            len(captured),
            note="section omejdn",
            sql=[s.sql for s in captured],
        )

    # --- composites ----------------------------------------------------------------

    def token_request(self) -> Case:
        """What a token request asks of storage: the client, the signing keys, the config."""
        _, client_floor, client_sql = self._rotated(self.fire_client_get, self.client_ids)
        keys_sql = self._steady(self.fire_keys_load)
        config_sql = self._steady(self.fire_configuration_load)
        per_client = [(*c, *keys_sql, *config_sql) for c in client_floor]
        ids = itertools.cycle(self.client_ids)

        def ours() -> None:
            if first(self.fire_client_get(next(ids))) is None:
                raise AssertionError("token request: no client")
            self.fire_keys_load()
            self.fire_configuration_load()

        return Case(
            "token request",
            "composite",
            ours,
            self._cycling_floor(per_client),
            len(client_sql) + len(keys_sql) + len(config_sql),
            note="CLIENT_GET + KEYS_LOAD + CONFIGURATION_LOAD",
        )

    def login(self) -> Case:
        """USER_GET then USER_AUTHENTICATION_PASSWORD_VERIFY, bcrypt at cost 4 on both sides."""
        indexes = self.user_indexes
        user0 = first(self.fire_user_get(seed.username(indexes[0])))

        def verify(user: object, index: int) -> Any:
            return first(
                self.loader.fire(
                    events.USER_AUTHENTICATION_PASSWORD_VERIFY,
                    user=user,
                    password=seed.password(index),
                )
            )

        verify_sql = self._steady(lambda: verify(user0, indexes[0]))
        _, get_floor, get_sql = self._rotated(self.fire_user_get, self.user_names)
        name0 = seed.username(indexes[0])
        plan = [
            (
                get_floor[n],
                tuple(s.substitute(name0, seed.username(i)) for s in verify_sql),
                seed.password(i).encode(),
            )
            for n, i in enumerate(indexes)
        ]
        ours_indexes = itertools.cycle(indexes)

        def ours() -> None:
            index = next(ours_indexes)
            user = first(self.fire_user_get(seed.username(index)))
            if verify(user, index) is not True:
                raise AssertionError(f"login of {seed.username(index)} failed")

        floor_plans = itertools.cycle(plan)
        execute = self.floor.execute

        def floor() -> None:
            get, check, secret = next(floor_plans)
            execute(get)
            stored = execute(check)[-1][0][0]
            if not bcrypt.checkpw(secret, stored.encode()):
                raise AssertionError("floor login failed")

        floor()
        return Case(
            "login",
            "composite",
            ours,
            floor,
            len(get_sql) + len(verify_sql),
            note=f"USER_GET + USER_AUTHENTICATION_PASSWORD_VERIFY, bcrypt cost {seed.BCRYPT_COST}",
        )

    # --- writes --------------------------------------------------------------------

    def _write(self, name: str, call: Call, note: str) -> Case:
        captured = self._steady(call)
        floor = self.floor.write(captured)
        floor()  # prepared, as ours is after _steady: neither side counts a Parse's wait
        return Case(
            name,
            "write",
            call,
            floor,
            len(captured),
            share=0.5,
            note=note,
            sql=[s.sql for s in captured],
            round_trips=(
                round_trips(call, engine=self.engine),
                round_trips(floor, connection=self.floor.conn),
            ),
        )

    def user_update(self) -> Case:
        user = first(self.fire_user_get(seed.username(1)))
        return self._write(
            "USER_UPDATE",
            lambda: self.loader.fire(events.USER_UPDATE, user=user),
            "one user, its 5 attributes replaced",
        )

    def client_update(self) -> Case:
        client = first(self.fire_client_get(self.client_ids[1]))
        return self._write(
            "CLIENT_UPDATE",
            lambda: self.loader.fire(events.CLIENT_UPDATE, client=client),
            "one client, its metadata rows replaced",
        )

    def password_change(self) -> Case:
        """The SQL of a password change beside its floor, bcrypt on both sides (the hash is
        the same work whoever computes it; only what comes around it is the package's)."""
        user = first(self.fire_user_get(seed.username(2)))
        password = seed.password(2).encode()
        case = self._write(
            "PASSWORD_CHANGE",
            lambda: self.loader.fire(
                events.USER_AUTHENTICATION_PASSWORD_CHANGE, user=user, password=seed.password(2)
            ),
            f"USER_AUTHENTICATION_PASSWORD_CHANGE, bcrypt cost {seed.BCRYPT_COST} on both sides",
        )
        replay = case.floor

        def floor() -> object:
            bcrypt.hashpw(password, bcrypt.gensalt(seed.BCRYPT_COST))
            return replay()

        case.floor = floor
        return case

    def configuration_store(self) -> Case:
        return self._write(
            "CONFIGURATION_STORE",
            lambda: self.loader.fire(
                events.CONFIGURATION_STORE, section="omejdn", data=seed.OMEJDN_SECTION
            ),
            f"section omejdn ({len(seed.OMEJDN_SECTION)} keys)",
        )

    def keys_store(self) -> Case:
        target_type, target = seed.KEYS_STORE_TARGET
        jwks = self.signing_keys.to_jwks(private=True)
        return self._write(
            "KEYS_STORE",
            lambda: self.loader.fire(
                events.KEYS_STORE, target_type=target_type, target=target, jwks=jwks
            ),
            "a 2-key JWK Set with private members",
        )

    # --- listings ------------------------------------------------------------------

    def user_get_all(self) -> Case:
        def call() -> list[Any]:
            return self.loader.fire(events.USER_GET_ALL)

        captured = self._steady(call, warmup=1)
        found = first(call())
        if len(found) != self.users:
            raise AssertionError(f"USER_GET_ALL gave {len(found)} users, not {self.users}")
        # One row per user, its attributes folded into it.
        if len(self.floor.execute(captured)[-1]) != self.users:
            raise AssertionError("the USER_GET_ALL floor returned another number of rows")
        return Case(
            "USER_GET_ALL",
            "listing",
            call,
            self.floor.read(captured),
            len(captured),
            share=0.005,
            n_plus_1=self.ruby_users,
            note=f"{self.users} users",
            sql=[s.sql for s in captured],
        )

    def client_get_all(self) -> Case:
        def call() -> list[Any]:
            return self.loader.fire(events.CLIENT_GET_ALL)

        captured = self._steady(call, warmup=1)
        found = first(call())
        if len(found) != seed.CLIENT_COUNT:
            raise AssertionError(f"CLIENT_GET_ALL gave {len(found)} clients")
        return Case(
            "CLIENT_GET_ALL",
            "listing",
            call,
            self.floor.read(captured),
            len(captured),
            share=0.01,
            n_plus_1=self.ruby_clients,
            note=f"{seed.CLIENT_COUNT} clients",
            sql=[s.sql for s in captured],
        )

    def ruby_users(self) -> object:
        """The Ruby plugin's USER_GET_ALL: all users, then one attributes query per user."""
        return ruby_users(self.floor)

    def ruby_clients(self) -> object:
        """The Ruby plugin's CLIENT_GET_ALL: all metadata rows, then attributes per client."""
        conn = self.floor.conn
        # The Ruby plugin reads SELECT * by column name: the columns it reads.
        rows = conn.execute("SELECT client_id, key, value FROM clients", prepare=True).fetchall()
        found: dict[str, dict[str, Any]] = {}
        for client_id, key, value in rows:
            found.setdefault(client_id, {})[key] = value
        for client_id, metadata in found.items():
            metadata["attributes"] = conn.execute(
                "SELECT * FROM attributes WHERE type = %s AND identifier = %s",
                ("client", client_id),
                prepare=True,
            ).fetchall()
        return found

    # --- the cached side -----------------------------------------------------------

    def readers(self) -> dict[str, Call]:
        """The point reads and the token request alone (no floor): for a cached host."""
        users = itertools.cycle(self.user_names)
        clients = itertools.cycle(self.client_ids)
        token_clients = itertools.cycle(self.client_ids)

        def found(answers: list[Any], what: str) -> Any:
            answer = first(answers)
            if answer is None:
                raise AssertionError(f"cached {what} found nothing")
            return answer

        def token_request() -> None:
            found(self.fire_client_get(next(token_clients)), "CLIENT_GET")
            found(self.fire_keys_load(), "KEYS_LOAD")
            found(self.fire_configuration_load(), "CONFIGURATION_LOAD")

        return {
            "USER_GET": lambda: found(self.fire_user_get(next(users)), "USER_GET"),
            "CLIENT_GET": lambda: found(self.fire_client_get(next(clients)), "CLIENT_GET"),
            "KEYS_LOAD": lambda: found(self.fire_keys_load(), "KEYS_LOAD"),
            "CONFIGURATION_LOAD": lambda: found(
                self.fire_configuration_load(), "CONFIGURATION_LOAD"
            ),
            "token request": token_request,
        }

    @property
    def rotation(self) -> int:
        """Keys a rotating read cycles over: calls to touch each once."""
        return max(len(self.user_names), len(self.client_ids))

    # --- checks --------------------------------------------------------------------

    def _check_found(self, answers: list[Any], statements: Sequence[Statement], what: str) -> None:
        if first(answers) is None:
            raise AssertionError(f"{what} found nothing")
        self._check_rows(statements, what)

    def _check_rows(self, statements: Sequence[Statement], what: str) -> None:
        if not statements:
            raise AssertionError(
                f"{what} sent no SQL: its floor cannot be measured (is a cache on?)"
            )
        if not self.floor.execute(statements)[-1]:
            raise AssertionError(f"the floor of {what} returned no row")

    def all(self) -> list[Case]:
        return [
            self.user_get(),
            self.client_get(),
            self.keys_load(),
            self.configuration_load(),
            self.token_request(),
            self.login(),
            self.user_update(),
            self.client_update(),
            self.password_change(),
            self.configuration_store(),
            self.keys_store(),
            self.user_get_all(),
            self.client_get_all(),
        ]


def ruby_users(floor: Floor) -> object:
    """The Ruby plugin's USER_GET_ALL on ``floor``'s connection (statements prepared)."""
    conn = floor.conn
    users = conn.execute("SELECT * FROM users", prepare=True).fetchall()
    return [
        (
            row,
            conn.execute(
                "SELECT * FROM attributes WHERE type = %s AND identifier = %s",
                ("user", row[0]),
                prepare=True,
            ).fetchall(),
        )
        for row in users
    ]
