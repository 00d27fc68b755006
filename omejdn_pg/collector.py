"""Pausing Python's cyclic garbage collector while a bulk result is built.

A listing or an import makes a few objects per user (the User, its attribute
and consent dicts, a row), none of them in a cycle, and keeps them all until it
returns. The collector's full passes start each time the surviving objects
have grown by a quarter, and every pass walks all of them again: a third of a
100,000-user ``USER_GET_ALL`` (330 → 210 ms, the same when the work between
listings is counted). Reference counting still frees everything as usual;
only the cycle search waits, and the first collection after the pause finds
whatever cycles other threads made meanwhile.

The pause is shared: several threads may hold it at once, and the collector
comes back when the last one lets go, and only if it was on when the first
one began.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_resume = False
"""Whether the collector was on when the current pause began."""


@contextmanager
def paused() -> Iterator[None]:
    """No automatic cyclic collection inside (reference counting goes on)."""
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _resume:
                _promote_without_a_pass()
                gc.enable()


def _promote_without_a_pass() -> None:
    """Move what the young generations hold into the oldest, scanning nothing.

    Everything made during the pause sits in the youngest generation, far past
    its threshold, so the first allocation after it would walk every object of
    the result once more (6,000 lists, dicts and Clients for 1,000 clients:
    0.4 ms, a tenth of CLIENT_GET_ALL). Freezing and unfreezing moves them all to
    the oldest generation in constant time: what reference counting frees
    leaves it as from any other, and a cycle made meanwhile waits for the next
    full pass instead of the next young one. Not done while someone else keeps
    objects frozen (a pre-forking server's ``gc.freeze()``): unfreezing would
    hand theirs back to the collector.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()
