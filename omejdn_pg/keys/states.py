"""The states of a key's lifecycle, named once for the model, the storage and the rules.

A closed set of three strings rather than an enum: they are stored as text,
written in files and typed on the command line as they are, and a ``Literal``
lets mypy check every comparison without a conversion at each edge.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

KeyState: TypeAlias = Literal["next", "active", "retired"]
KEY_STATES: Final[tuple[KeyState, ...]] = ("next", "active", "retired")
