"""The collector policy's holds: they nest, and the last release gives back what was."""

from __future__ import annotations

import gc
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
