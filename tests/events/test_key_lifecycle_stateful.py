"""The key lifecycle's invariants under any interleaving of operations and any schedule of
``keys maintain``: a hypothesis state machine against the suite's real PostgreSQL.

The machine drives one target through the host as an operator and Omejdn's core would:
rotations to any algorithm with any publish window, activations and retirements by
hand (forced or not), deletions, a host storing back the set it loaded (with a key of
its own added, or with the private members it was not given stripped), and ``maintain``
runs — on time, late by seconds to days, twice in a row, from several threads at once,
or never — on a clock of its own that only moves forward. After every step it checks
what relying parties and Omejdn's core see (``KEYS_LOAD`` and ``KEYS_LOAD_ALL`` through
the events, the rows with plain SQL):

(a) a key signs only after it has been published for its publish window, unless the
    operator forced it or it is the first key of a set;
(b) a key stays in ``KEYS_LOAD_ALL`` as long as a token it signed can be valid (its
    last moment as signer + the token lifetime + the margin), unless deleted by hand;
(c) once the target has a signer it has exactly one, unless the operator forced it
    away, and the Ruby plugin's ``sk`` row is that signer;
(d) ``maintain`` run again at the same moment changes nothing, and runs from several
    threads at once apply each transition once.

Examples are bounded for CI: ``OMEJDN_PG_LIFECYCLE_EXAMPLES`` (default 10) and
``OMEJDN_PG_LIFECYCLE_STEPS`` (default 25) raise them for a longer local run.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from omejdn_pg import PluginLoader
from omejdn_pg.host import events
from omejdn_pg.keys.model import Key, generate_key
from omejdn_pg.lifecycle import LifecycleError, TooEarly, is_signer
from omejdn_pg.postgres.repositories import key_mapping
from omejdn_pg.service.host import Host
from omejdn_pg.settings.connection import ConnectionSettings
from tests.kits.plugins import plugin_yaml
from tests.kits.threads import run_together
from tests.kits.witness import PlainSQL

T = TypeVar("T")
EXAMPLES = int(os.environ.get("OMEJDN_PG_LIFECYCLE_EXAMPLES", "10"))
STEPS = int(os.environ.get("OMEJDN_PG_LIFECYCLE_STEPS", "25"))

START = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
SECOND = datetime.timedelta(seconds=1)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
LIFETIME = 600 * SECOND  # the omejdn section's access and ID token expiration
MARGIN = HOUR  # retire_margin's default
STORE_PUBLISH_FOR = 2 * DAY  # publish_for's default: a host's new key waits this long
TARGET = ("omejdn", "omejdn")
ALGS = ("RS256", "PS256", "ES256", "ES384")
POOL_SIZE = 6

_pool: dict[str, list[Key]] = {}


def pool(alg: str) -> list[Key]:
    """Keys made once per run: generating RSA keys would dominate every example."""
    if alg not in _pool:
        _pool[alg] = [generate_key(alg) for _ in range(POOL_SIZE)]
    return _pool[alg]


class Lifecycle(RuleBasedStateMachine):
    host: Host
    loader: PluginLoader
    sql: PlainSQL
    examples = 0  # machines run, and steps checked, for the figures a run prints
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        Lifecycle.examples += 1
        self.now = START
        self.used: set[str] = set()
        self.published_since: dict[str, datetime.datetime] = {}
        self.window: dict[str, datetime.timedelta] = {}  # publish window owed before signing
        self.last_signed: dict[str, datetime.datetime] = {}
        self.deleted: set[str] = set()
        self.signer: str | None = None
        self.had_signer = False
        self.signerless_allowed = False
        self.host_extras: set[str] = set()
        self.host.keys.delete(*TARGET)
        key_mapping.now = lambda: self.now  # KEYS_STORE dates by the machine's clock

    # --- helpers ----------------------------------------------------------------------

    def fresh_key(self, alg: str) -> Key:
        for key in pool(alg):
            if key.kid not in self.used:
                self.used.add(key.kid)
                return key
        key = generate_key(alg)
        self.used.add(key.kid)
        return key

    def stored(self) -> list[Key]:
        return list(self.host.keys.stored(*TARGET))

    def rows(self) -> list[tuple[Any, ...]]:
        return self.sql.rows(
            "SELECT kid, type, state, position, value, created_at, activate_at, retired_at, "
            "destroy_at FROM keys ORDER BY kid, type"
        )

    def pick(self, index: int) -> Key | None:
        keys = self.stored()
        return keys[index % len(keys)] if keys else None

    # --- rules ------------------------------------------------------------------------

    @initialize(alg=st.sampled_from(ALGS))
    def first_key(self, alg: str) -> None:
        key = self.host.keys.rotate(*TARGET, key=self.fresh_key(alg), now=self.now, create=True)
        assert key.state == "active"  # the first key of a set signs at once
        self.window[key.kid] = datetime.timedelta(0)

    @rule(
        step=st.sampled_from(
            [SECOND, 30 * SECOND, 10 * 60 * SECOND, HOUR, 3 * HOUR, DAY, 2 * DAY, 3 * DAY]
        )
    )
    def time_passes(self, step: datetime.timedelta) -> None:
        # Nothing runs meanwhile: every maintain that would have come is late or skipped.
        self.now += step

    @rule(
        alg=st.sampled_from(ALGS),
        publish_for=st.sampled_from([datetime.timedelta(0), 10 * SECOND, HOUR, 2 * DAY]),
    )
    def rotate(self, alg: str, publish_for: datetime.timedelta) -> None:
        before = self.rows()
        pending = [k for k in self.stored() if k.state == "next" and k.is_private]
        key, error = attempt(
            lambda: self.host.keys.rotate(
                *TARGET, key=self.fresh_key(alg), publish_for=publish_for, now=self.now, create=True
            )
        )
        if key is None:
            assert pending  # refused only beside a pending signing key
            assert "already waiting" in str(error)
            assert self.rows() == before
            return
        assert not pending
        self.window[key.kid] = publish_for if key.state == "next" else datetime.timedelta(0)

    @rule(index=st.integers(0, 9), force=st.booleans())
    def activate(self, index: int, force: bool) -> None:
        chosen = self.pick(index)
        if chosen is None:
            return
        before = self.rows()
        early = (
            chosen.state != "active"
            and chosen.lifecycle.activate_at is not None
            and self.now < chosen.lifecycle.activate_at
        )
        _, error = attempt(
            lambda: self.host.keys.activate(*TARGET, chosen.kid, force=force, now=self.now)
        )
        if error is not None:
            assert self.rows() == before
            if isinstance(error, TooEarly):
                assert early
                assert not force
            else:
                assert not (chosen.is_private and chosen.use == "sig"), error
            return
        assert not early or force
        if early:
            self.window[chosen.kid] = datetime.timedelta(0)  # the operator's choice
        self.host_extras.clear()  # retired with the previous signer
        assert sum(map(is_signer, self.stored())) == 1

    @rule(index=st.integers(0, 9), force=st.booleans())
    def retire(self, index: int, force: bool) -> None:
        chosen = self.pick(index)
        if chosen is None:
            return
        before = self.rows()
        _, error = attempt(
            lambda: self.host.keys.retire(*TARGET, chosen.kid, force=force, now=self.now)
        )
        if error is not None:
            assert is_signer(chosen)
            assert not force
            assert self.rows() == before
            return
        if is_signer(chosen) and not any(map(is_signer, self.stored())):
            self.signerless_allowed = True

    @rule(index=st.integers(0, 9), force=st.booleans())
    def delete(self, index: int, force: bool) -> None:
        chosen = self.pick(index)
        if chosen is None:
            return
        before = self.rows()
        _, error = attempt(lambda: self.host.keys.delete(*TARGET, chosen.kid, force=force))
        if error is not None:
            assert is_signer(chosen)
            assert not force
            assert self.rows() == before
            return
        self.deleted.add(chosen.kid)
        if is_signer(chosen) and not any(map(is_signer, self.stored())):
            self.signerless_allowed = True

    @rule(add=st.sampled_from([None, "RS256", "ES256"]), strip=st.booleans())
    def host_stores_back(self, add: str | None, strip: bool) -> None:
        """Omejdn's core storing the set it loaded (KEYS_LOAD, then KEYS_STORE)."""
        (loaded,) = self.loader.fire(events.KEYS_LOAD, target_type=TARGET[0], target=TARGET[1])
        jwks = [dict(jwk) for jwk in (loaded or {}).get("keys", [])]
        if strip:
            jwks = [{n: v for n, v in jwk.items() if n not in PRIVATE} for jwk in jwks]
        signer_before = next((k for k in self.stored() if is_signer(k)), None)
        new = self.fresh_key(add) if add else None
        if new is not None:
            jwks.append(new.to_jwk(private=True))
        self.loader.fire(
            events.KEYS_STORE, target_type=TARGET[0], target=TARGET[1], jwks={"keys": jwks}
        )
        if new is not None:
            (stored,) = [k for k in self.stored() if k.kid == new.kid]
            # A host's new key is active as it stored it (Omejdn's file layout holds
            # several); beside a signer it does not sign, and it may only ever sign
            # by the host's choice or the operator's force, so it owes no window.
            assert stored.state == "active"
            self.window[new.kid] = datetime.timedelta(0)
            if signer_before is not None:
                self.host_extras.add(new.kid)

    @rule()
    def maintain(self) -> None:
        changes = self.host.keys.maintain(now=self.now)
        after = self.rows()
        if any(c.change == "activated" for c in changes):
            assert sum(map(is_signer, self.stored())) == 1
            self.host_extras.clear()
        assert self.host.keys.maintain(now=self.now) == []  # (d) idempotent
        assert self.rows() == after

    @rule()
    def maintain_from_three_threads(self) -> None:
        results = run_together(3, lambda _: self.host.keys.maintain(now=self.now))
        applied = []
        for result in results:
            assert not isinstance(result, BaseException), result
            applied.extend((c.kid, c.change) for c in result)
        assert len(applied) == len(set(applied))  # (d) each transition once
        if any(change == "activated" for _kid, change in applied):
            self.host_extras.clear()
        assert self.host.keys.maintain(now=self.now) == []

    # --- invariants -------------------------------------------------------------------

    @invariant()
    def relying_parties_and_the_core_see_a_consistent_set(self) -> None:
        Lifecycle.steps += 1
        stored = self.stored()
        signers = [k.kid for k in stored if is_signer(k)]
        loaded = self.loader.fire(events.KEYS_LOAD, target_type=TARGET[0], target=TARGET[1])
        core = next((j["kid"] for a in loaded for j in (a or {}).get("keys", []) if "d" in j), None)
        published = {
            jwk["kid"]
            for answer in self.loader.fire(events.KEYS_LOAD_ALL, target_type=TARGET[0])
            for jwk in (answer or {}).get("keys", [])
        }
        # (c) one signer, the one the core signs with and the sk row holds, and no
        # second active signing key but those a host stored; exactly one once there
        # was one, unless forced away.
        assert len([kid for kid in signers if kid not in self.host_extras]) <= 1, stored
        assert core == (signers[0] if signers else None)
        if signers:
            assert self.sql.value("SELECT kid FROM keys WHERE type = 'sk'") == signers[0]
            self.had_signer = True
            self.signerless_allowed = False
        elif self.had_signer and stored:
            assert self.signerless_allowed, stored
        for kid in published:
            self.published_since.setdefault(kid, self.now)
        # (a) a new signer has been published for its window.
        if core is not None and core != self.signer:
            owed = self.window.get(core, datetime.timedelta(0))
            assert self.now - self.published_since[core] >= owed, (core, owed)
        self.signer = core
        if core is not None:
            self.last_signed[core] = self.now
        # (b) published while a token it signed can be valid.
        for kid, last in self.last_signed.items():
            if kid not in self.deleted and self.now < last + LIFETIME + MARGIN:
                assert kid in published, (kid, last, self.now)


PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi"})


def attempt(call: Callable[[], T]) -> tuple[T | None, LifecycleError | None]:
    """``(call(), None)``, or ``(None, the refusal)`` when the lifecycle refuses it."""
    try:
        return call(), None
    except LifecycleError as error:
        return None, error


@pytest.fixture
def lifecycle_host(database: ConnectionSettings, tmp_path: Path) -> Iterator[Host]:
    path = tmp_path / "plugins.yml"
    path.write_text(plugin_yaml(database))
    with PluginLoader.from_files([path], base_dir=tmp_path) as loader:
        host = Host(loader)
        seconds = int(LIFETIME.total_seconds())
        host.config.write(
            "omejdn",
            {"access_token": {"expiration": seconds}, "id_token": {"expiration": seconds}},
        )
        assert host.keys.retirement_window() == LIFETIME + MARGIN
        yield host


def test_the_lifecycle_keeps_its_invariants_under_any_schedule(
    lifecycle_host: Host, plain_sql: PlainSQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(key_mapping, "now", key_mapping.now)  # restored afterwards
    Lifecycle.host = lifecycle_host
    Lifecycle.loader = lifecycle_host.loader
    Lifecycle.sql = plain_sql
    Lifecycle.examples = Lifecycle.steps = 0
    started = time.monotonic()
    run_state_machine_as_test(
        Lifecycle,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
    print(
        f"lifecycle state machine: {Lifecycle.examples} examples, {Lifecycle.steps} checked "
        f"states, {time.monotonic() - started:.1f} s"
    )
