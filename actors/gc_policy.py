"""The garbage collector's policy for a running node, in one place (the runtime and the
harnesses that stand in for it use the same).

After a (re)start the recovered state is long-lived: one collection, then ``gc.freeze()`` moves
the survivors out of every generation the collector scans. The young generation is then widened:
with CPython's 700 allocations, the objects of requests and messages still in flight get promoted,
and the older collections that follow pause the event loop for 50-70 ms every few seconds under
REST load (``bench.rest`` shows it in the reads' p99 and the saturated throughput).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEFAULT_GEN0", "bulk_build", "hold", "release", "settle"]

DEFAULT_GEN0 = 10_000


def settle(gen0: int = DEFAULT_GEN0) -> None:
    """Collect, freeze what survived, and set the young generation to ``gen0`` allocations
    (0: no automatic collection)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, 10, 10)


@contextmanager
def bulk_build(min_frozen: int = DEFAULT_GEN0) -> Iterator[None]:
    """For bulk builds of long-lived objects (an actor restoring a recovered state): no
    collection inside, and what was built is frozen at the end if it is ``min_frozen``
    objects or more. Without this, every young collection would rescan the growing heap and
    the first one after it would scan all of it (a 100,000-position restart spent half a second
    of its arming so); with it, a recovery looks like the start-up that :func:`settle` already
    freezes.

    ``gc.freeze`` takes every object alive at that moment, not only the build's: the requests
    and streams in flight too. Frozen objects are still freed by reference counting, but one
    that ends in a cycle is never collected (and ``gc.get_referrers`` no longer sees them). So a
    small build (a user with a few positions, started while the node serves) is left to the
    young collections, which take it cheaply."""
    collecting = gc.isenabled()
    gc.disable()
    before = gc.get_count()[0]  # tracked objects allocated, net, since the last collection
    try:
        yield
    finally:
        if gc.get_count()[0] - before >= min_frozen:
            gc.freeze()
        if collecting:
            gc.enable()


class _Holds:
    """How many holds are in force, and whether the collector ran before the first."""

    count = 0
    resume = False


def hold() -> None:
    """No automatic collection until the matching :func:`release` (holds nest, across tasks).

    For a breach storm: the crossed levels wait in one list of up to 100,000 items and the
    fired triggers in lists of 25,000, all young, and every young collection walked them
    again: ~0.1 s of a 100,000-level storm (bench.engine). Held, the collections come after
    it; what the storm leaves is freed by reference counting as before, and a cycle made
    meanwhile waits for the first collection after the release.
    """
    if _Holds.count == 0:
        _Holds.resume = gc.isenabled()
        gc.disable()
    _Holds.count += 1


def release() -> None:
    """End a :func:`hold`; the last one gives the collector back as it was."""
    if _Holds.count <= 0:
        raise RuntimeError("gc_policy.release() without a hold")
    _Holds.count -= 1
    if _Holds.count == 0 and _Holds.resume:
        gc.enable()
