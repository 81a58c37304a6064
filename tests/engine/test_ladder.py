"""Ladder against a sorted list: pushes, bulk extends, takes and rebuilds in any mix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import ladder
from engine.ladder import Ladder

key = st.integers(-20, 20)
push = st.tuples(st.just("push"), key)
extend = st.tuples(st.just("extend"), st.lists(key, max_size=40))
take = st.tuples(st.just("take"), key)
rebuild = st.tuples(st.just("rebuild"), st.integers(1, 5))  # keep the seqs divisible by it
pushes = st.tuples(st.just("pushes"), st.lists(key, max_size=20))  # a busy market's arms
operations = st.lists(st.one_of(push, pushes, extend, take, take, rebuild), max_size=120)


@pytest.mark.parametrize("trim_min", [1, 3, 4096])
@given(ops=operations)
def test_ladder_matches_a_sorted_list(trim_min: int, ops: list[tuple]) -> None:
    """(The trim threshold is set small as well, so that trims happen in small cases; a
    rebuild, even one that keeps everything, merges the overflow into the run.)"""
    saved = ladder._TRIM_MIN
    ladder._TRIM_MIN = trim_min
    try:
        lad, model = Ladder(), []
        seq = 0
        for op in ops:
            if op[0] in ("push", "pushes"):
                for k in [op[1]] if op[0] == "push" else op[1]:
                    seq += 1
                    lad.push(k, seq, f"p{seq}")
                    model.append((k, seq, f"p{seq}"))
            elif op[0] == "extend":
                keys = op[1]
                seqs = list(range(seq + 1, seq + 1 + len(keys)))
                seq += len(keys)
                lad.extend(keys, seqs, [f"p{s}" for s in seqs])
                model += [(k, s, f"p{s}") for k, s in zip(keys, seqs, strict=True)]
            elif op[0] == "take":
                model.sort()
                crossed = [item for item in model if item[0] <= op[1]]
                model = [item for item in model if item[0] > op[1]]
                keys, seqs, ids = lad.take(op[1])
                assert list(zip(keys, seqs, ids, strict=True)) == crossed
            else:
                n = op[1]
                lad.rebuild(np.arange(n, seq + 1, n))
                model = [item for item in model if item[1] % n == 0]
            assert len(lad) == len(model)
            assert lad.top() == (min(model)[0] if model else float("inf"))
            lad.check()
    finally:
        ladder._TRIM_MIN = saved


def test_a_large_take_is_one_slice_of_the_run() -> None:
    lad = Ladder()
    lad.extend(
        list(range(100_000, 0, -1)), list(range(1, 100_001)), [str(i) for i in range(100_000)]
    )
    keys, _, ids = lad.take(50_000)
    assert keys == list(range(1, 50_001)) and ids[0] == "99999"
    assert len(lad) == 50_000 and lad.top() == 50_001


def test_a_take_past_the_pops_is_one_slice_in_order() -> None:
    """More crossed overflow items than are popped one by one: the rest come as a slice."""
    lad = Ladder()
    keys = [5, 3, 3, 9, 1, 7, 3, 2, 8, 6]
    for seq, key in enumerate(keys, 1):
        lad.push(key, seq, f"p{seq}")
    crossed = lad.take(7)
    expected = sorted((k, s, f"p{s}") for s, k in enumerate(keys, 1) if k <= 7)
    assert list(zip(*crossed, strict=True)) == expected
    assert len(lad) == 2 and lad.top() == 8
