"""What an import or export did: one change per user, client, section or key target.

A :class:`Change` carries the write that makes it (``apply``, given the Host),
so a plan is a list of changes and applying it is calling them in order; the
:class:`Report` counts them per kind for the commands to print.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from omejdn_pg.service.host import Host

KINDS: Final = ("users", "clients", "config", "keys")


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Change:
    """One user, client, section or key target, and what the import does with it."""

    kind: str
    name: str
    action: Action
    apply: Callable[[Host], None] | None = field(default=None, compare=False, repr=False)


@dataclass
class Report:
    """What an import or export did (or, for a dry run, would do)."""

    changes: list[Change] = field(default_factory=list)
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.action is not Action.UNCHANGED]

    def counts(self) -> dict[str, dict[str, int]]:
        """``{kind: {create, update, unchanged}}`` for every kind, zeros included."""
        tally = Counter((c.kind, c.action) for c in self.changes)
        return {kind: {a.value: tally[(kind, a)] for a in Action} for kind in KINDS}

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "changes": [
                {"kind": c.kind, "name": c.name, "action": c.action.value} for c in self.changed
            ],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 3),
        }


Progress = Callable[[Change], None]
Target = tuple[str, str]
