"""What the suite watches for: secrets that must never appear in logs, messages or output.

Tests register the random secrets they make (key-encryption keys) with
:func:`watch`; the fixed ones are the passwords the tests use and the PEM
marker of a private key.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

FIXED: Final = (
    "PRIVATE KEY-----",
    "mypassword",
    "right-password",
    "supersecret",
    "alice-secret",
    "dave-secret",
    "n3w-secret",
    "a-new-password",
    "another-password",
    "-demo-password",
)

_lock = threading.Lock()
_watched: set[str] = set(FIXED)
_said: list[str] = []


def watch(secret: str) -> str:
    """Add ``secret`` to what must never be said; returns it, for inline use."""
    with _lock:
        _watched.add(secret)
    return secret


def said(text: str) -> None:
    """Record something the package said (a log line, a message, CLI output)."""
    with _lock:
        _said.append(text)


def leaks() -> list[str]:
    with _lock:
        return [
            f"{secret!r} in {text[:200]!r}"
            for text in _said
            for secret in _watched
            if secret in text
        ]


class CapturingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            said(self.format(record))
        except Exception:
            said(str(record.msg))
