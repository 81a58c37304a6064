"""The collector policy: holds nest and the last release gives back what was; a bulk build
freezes only a build large enough to matter, not what is in flight beside a small one."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from actors import gc_policy


@pytest.fixture(autouse=True)
def collector_back() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_holds_nest_and_the_last_release_collects_again() -> None:
    gc.enable()
    gc_policy.hold()
    gc_policy.hold()
    assert not gc.isenabled()
    gc_policy.release()
    assert not gc.isenabled()  # one hold is still in force
    gc_policy.release()
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    gc_policy.hold()
    gc_policy.release()
    assert not gc.isenabled()


def test_a_release_without_a_hold_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        gc_policy.release()


def test_a_bulk_build_inside_a_hold_leaves_the_collector_held() -> None:
    gc.enable()
    gc_policy.hold()
    with gc_policy.bulk_build():
        pass
    assert not gc.isenabled()
    gc_policy.release()
    assert gc.isenabled()


class _Cyclic:
    """Something in flight that ends in a reference cycle (a request, an exception's frames)."""

    def __init__(self) -> None:
        self.me = self


def test_what_is_in_flight_beside_a_small_build_is_still_collected() -> None:
    gc.enable()
    in_flight = _Cyclic()
    gone = weakref.ref(in_flight)
    with gc_policy.bulk_build():
        built = [[i] for i in range(100)]  # a user with a few positions, started meanwhile
    del in_flight
    gc.collect()
    assert gone() is None  # frozen, its cycle would never be collected
    assert len(built) == 100


def test_a_large_build_is_frozen() -> None:
    gc.enable()
    frozen = gc.get_freeze_count()
    with gc_policy.bulk_build():
        built = [[i] for i in range(2 * gc_policy.DEFAULT_GEN0)]
    assert gc.get_freeze_count() >= frozen + len(built)
    assert gc.isenabled()
