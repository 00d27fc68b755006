"""How Omejdn's core reads the answers of its events, shared by the Host's parts.

An event fired to several backends has several answers: Omejdn's core takes
the first that is not None (a user found, a password verified, a section
loaded). The ``omejdn`` configuration section holds what the core reads of
its own settings at run time (``user_backend_default``, token lifetimes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from omejdn_pg.host import events
from omejdn_pg.host.events import EventBus

OMEJDN_SECTION: Final = "omejdn"


def first(answers: Iterable[Any]) -> Any:
    """The first answer that is not None, else None."""
    return next((answer for answer in answers if answer is not None), None)


def omejdn_section(loader: EventBus) -> dict[str, Any] | None:
    """The ``omejdn`` configuration section as CONFIGURATION_LOAD answers it, if a mapping."""
    section = first(loader.fire(events.CONFIGURATION_LOAD, section=OMEJDN_SECTION, fallback={}))
    return section if isinstance(section, dict) else None


def backend_default(loader: EventBus, group: str) -> str | None:
    """``<group>_backend_default`` where Omejdn's core reads it: the ``omejdn``
    configuration section (CONFIGURATION_LOAD), then the static file; None if
    neither names one (the loader then picks the sole active backend)."""
    key = f"{group}_backend_default"
    section = omejdn_section(loader)
    if section is not None and isinstance(section.get(key), str) and section[key]:
        name: str = section[key]
        return name
    static: str | None = getattr(loader.configuration, key)
    return static
