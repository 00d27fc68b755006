"""A key's place in its lifecycle: the state and its four dates, one value named once.

:class:`Lifecycle` is a frozen value rather than five fields of
:class:`~omejdn_pg.keys.model.Key` passed as keyword arguments: the storage,
the rules (:mod:`omejdn_pg.lifecycle`), the file store and the CLI hand it on
whole, and a transition (:meth:`Lifecycle.activated`, :meth:`Lifecycle.retired`)
is one call that cannot forget a date. The states are a closed set of three
strings rather than an enum: they are stored as text, written in files and
typed on the command line as they are, and a ``Literal`` lets mypy check every
comparison without a conversion at each edge. The dates are carried for the
storage and the rules; they are not interpreted here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeAlias

from omejdn_pg.errors import InvalidValue

KeyState: TypeAlias = Literal["next", "active", "retired"]
KEY_STATES: Final[tuple[KeyState, ...]] = ("next", "active", "retired")

DATES: Final = ("created_at", "activate_at", "retired_at", "destroy_at")
"""The lifecycle's dates, in the order a key reaches them (also the columns' names)."""


@dataclass(frozen=True)
class Lifecycle:
    """The state of a key and its dates, each timezone-aware and kept in UTC.

    ``created_at`` is when the key entered its set, ``activate_at`` when it
    signs (or signed) first, ``retired_at`` when it stopped signing and
    ``destroy_at`` when no token it signed can be valid any more.
    """

    state: KeyState = "active"
    created_at: datetime | None = None
    activate_at: datetime | None = None
    retired_at: datetime | None = None
    destroy_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.state not in KEY_STATES:
            raise InvalidValue(f"state must be one of {', '.join(KEY_STATES)}, got {self.state!r}")
        for name in DATES:
            object.__setattr__(self, name, _utc(getattr(self, name), name))

    @classmethod
    def of_row(cls, row: Any) -> Lifecycle:
        """The lifecycle of a stored row, which has a column of each name."""
        return cls(row.state, *(getattr(row, name) for name in DATES))

    def dates(self) -> dict[str, datetime | None]:
        """The dates by name, in :data:`DATES` order."""
        return {name: getattr(self, name) for name in DATES}

    def row(self) -> dict[str, Any]:
        """The columns of a stored row: the state and the dates by name."""
        return {"state": self.state, **self.dates()}

    def created(self, now: datetime) -> Lifecycle:
        """This lifecycle, created at ``now`` unless it knows when it was created."""
        return self if self.created_at is not None else dataclasses.replace(self, created_at=now)

    def published(self, now: datetime, publish_for: timedelta) -> Lifecycle:
        """Waiting from ``now``: published, signing once ``publish_for`` has passed."""
        return dataclasses.replace(
            self, state="next", created_at=now, activate_at=now + publish_for
        )

    def activated(self, now: datetime) -> Lifecycle:
        """Signing from ``now``; a retirement it had is undone."""
        return dataclasses.replace(
            self, state="active", activate_at=now, retired_at=None, destroy_at=None
        )

    def retired(self, now: datetime, retire_for: timedelta) -> Lifecycle:
        """Retired at ``now``, to be destroyed when ``retire_for`` has passed."""
        return dataclasses.replace(
            self, state="retired", retired_at=now, destroy_at=now + retire_for
        )


def _utc(value: object, name: str) -> datetime | None:
    if value is None:
        return None
    if type(value) is datetime and value.tzinfo is UTC:
        return value
    if not isinstance(value, datetime):
        raise InvalidValue(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time is ambiguous; guessing a zone would shift lifecycle dates.
        raise InvalidValue(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


UNDATED: Final = Lifecycle()
"""An active key with no dates: a key's lifecycle until the storage or the rules date it."""
