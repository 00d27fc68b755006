"""The shared pause of Python's cyclic garbage collector around bulk builds."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from omejdn_pg import collector


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_the_collector_is_off_inside_and_back_after_an_error_too() -> None:
    with collector.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector.paused():
        raise RuntimeError("a listing failed")
    assert gc.isenabled()


def test_it_comes_back_when_the_last_of_several_threads_lets_go() -> None:
    inside = threading.Barrier(2)
    first_left = threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with collector.paused():
            inside.wait()
        first_left.set()

    thread = threading.Thread(target=first)
    thread.start()
    with collector.paused():
        inside.wait()
        first_left.wait(5)
        seen.append(gc.isenabled())  # the other thread left; this one still builds
    thread.join(5)
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with collector.paused():
        assert not gc.isenabled()
    assert not gc.isenabled()
