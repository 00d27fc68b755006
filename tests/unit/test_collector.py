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


def test_what_was_made_during_the_pause_is_not_walked_again_when_it_ends() -> None:
    passes: list[int] = []

    def count_young_passes(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] < 2:
            passes.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count_young_passes)
    try:
        with collector.paused():
            made = [[index] for index in range(50_000)]  # far past the young threshold
        more = [[index] for index in range(100)]  # would start a young pass over all of it
    finally:
        gc.callbacks.remove(count_young_passes)
    assert len(made) + len(more) == 50_100
    assert passes == []
    assert gc.get_count()[0] < 200


def test_objects_someone_else_froze_stay_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collector.paused():
            _ = [[index] for index in range(1_000)]
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
