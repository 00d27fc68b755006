"""Lifecycle, the state and dates of a key as one value: checks, UTC, transitions; no database."""

from __future__ import annotations

import datetime
from types import SimpleNamespace

import pytest

from omejdn_pg.errors import InvalidValue
from omejdn_pg.keys.states import DATES, KEY_STATES, UNDATED, Lifecycle

UTC = datetime.UTC
NOW = datetime.datetime(2030, 1, 1, 12, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)


def test_a_state_outside_the_three_is_refused_with_them_named() -> None:
    with pytest.raises(
        InvalidValue, match=r"^state must be one of next, active, retired, got 'old'$"
    ):
        Lifecycle("old")  # type: ignore[arg-type]
    assert [Lifecycle(state).state for state in KEY_STATES] == list(KEY_STATES)


@pytest.mark.parametrize("name", DATES)
def test_a_naive_or_foreign_date_is_refused_by_name(name: str) -> None:
    with pytest.raises(
        InvalidValue, match=f"^{name} must be timezone-aware, got 2030-01-01T00:00:00$"
    ):
        Lifecycle(**{name: datetime.datetime(2030, 1, 1)})  # type: ignore[arg-type]
    with pytest.raises(InvalidValue, match=f"^{name} must be a datetime, got str$"):
        Lifecycle(**{name: "2030-01-01"})  # type: ignore[arg-type]


def test_dates_are_kept_in_utc() -> None:
    plus_one = datetime.timezone(HOUR)
    lifecycle = Lifecycle(created_at=datetime.datetime(2030, 1, 1, 13, tzinfo=plus_one))

    assert lifecycle.created_at == NOW
    assert lifecycle.created_at is not None
    assert lifecycle.created_at.tzinfo is UTC


def test_transitions_date_the_state_they_reach() -> None:
    waiting = UNDATED.published(NOW, 48 * HOUR)
    assert waiting == Lifecycle("next", created_at=NOW, activate_at=NOW + 48 * HOUR)

    active = waiting.activated(NOW + 50 * HOUR)
    assert active == Lifecycle("active", created_at=NOW, activate_at=NOW + 50 * HOUR)

    retired = active.retired(NOW + 60 * HOUR, 2 * HOUR)
    assert retired == Lifecycle(
        "retired",
        created_at=NOW,
        activate_at=NOW + 50 * HOUR,
        retired_at=NOW + 60 * HOUR,
        destroy_at=NOW + 62 * HOUR,
    )
    # Re-activating a retired key (a rollback) undoes its retirement.
    assert retired.activated(NOW + 61 * HOUR) == Lifecycle(
        "active", created_at=NOW, activate_at=NOW + 61 * HOUR
    )


def test_created_dates_only_what_has_no_creation_date() -> None:
    assert UNDATED.created(NOW) == Lifecycle(created_at=NOW)
    known = Lifecycle("next", created_at=NOW - HOUR, activate_at=NOW)
    assert known.created(NOW) is known


def test_a_row_round_trips_through_its_columns() -> None:
    lifecycle = Lifecycle("retired", NOW, NOW + HOUR, NOW + 2 * HOUR, NOW + 3 * HOUR)

    row = lifecycle.row()

    assert list(row) == ["state", *DATES]
    assert Lifecycle.of_row(SimpleNamespace(**row)) == lifecycle
    assert lifecycle.dates() == {name: row[name] for name in DATES}


def test_a_lifecycle_is_a_value() -> None:
    with pytest.raises(AttributeError):
        UNDATED.state = "retired"  # type: ignore[misc]
    assert Lifecycle() == UNDATED
    assert hash(Lifecycle("next", NOW)) == hash(Lifecycle("next", NOW))
