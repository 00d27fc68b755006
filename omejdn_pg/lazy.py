"""Names a package re-exports lazily: importing the package loads none of their modules.

A module ``__getattr__`` (PEP 562) rather than imports at the top, so that
``omejdn-pg --help`` and a listing do not pay for ``cryptography``,
SQLAlchemy or the password hashers they never use; the price is a table of
names to keep beside the ``TYPE_CHECKING`` imports that give them their types.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    namespace: dict[str, Any], names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for ``names`` (name -> defining module);
    a name is imported on first use and then kept in ``namespace`` (the module's globals)."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *names])

    return __getattr__, __dir__
