"""Recovery's fold (engine.replay) against the record-by-record fold it replaces.

Random snapshots and journals (hypothesis): positions saved, moved, closed and new since the
snapshot, history, commands and guards, batches of random sizes, the first one straddling the
snapshot. The result must be the state ``EngineState.apply`` reaches, record by record: the
same values, the same seq, and the positions in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.journal_index import MAGIC, MOVE, SAVE, encode_indexed_batch
from engine.lifecycle import FINAL_STATES, PositionState
from engine.records import (
    LevelsMoved,
    PositionSaved,
    Record,
    decode_batch,
    encode_batch,
)
from engine.replay import SnapshotReplay
from engine.state import EngineState, StateSnapshot
from tests.engine.hypothesis_records import position, record


def _reopened(records: list[Record]) -> bool:
    """Is a position saved live again after a final save? (Ids never are: the record-by-record
    fold would move it to the end of the dict, recovery keeps its first place.)"""
    closed: set[str] = set()
    for r in records:
        if isinstance(r, PositionSaved):
            if r.position.state in FINAL_STATES:
                closed.add(r.position.id)
            elif r.position.id in closed:
                return True
    return False


def _check(
    base: list[Record],
    journal: list[Record],
    sizes: list[int],
    straddle: int,
    chunk: int = 0,
    indexed: list[bool] | None = None,
    spoil: Callable[[bytes], bytes] | None = None,
) -> None:
    """Snapshot the fold of ``base`` (none if empty), journal ``journal`` after it in batches
    of ``sizes`` (cycled), the first batch beginning ``straddle`` records before the snapshot;
    fold them all at once (``chunk`` 0) or newest first, ``chunk`` batches at a time; or, with
    ``indexed`` (cycled: does batch k keep its replay index?), as the journal stores them,
    each index first passed through ``spoil`` if given."""
    one = EngineState()
    for seq, r in enumerate(base, start=1):
        one.apply(r, seq)
    snapshot = one.encode_snapshot() if base else None
    records = base + journal
    start = max(0, len(base) - straddle)
    batches, k = [], 0
    while start < len(records):
        size = sizes[k % len(sizes)]
        batch = records[start : start + size]
        batches.append((start + 1, start + len(batch), encode_batch(batch)))
        start, k = start + len(batch), k + 1
    for seq, r in enumerate(journal, start=len(base) + 1):
        one.apply(r, seq)

    replay = SnapshotReplay(snapshot)
    assert replay.seq == len(base)
    if indexed is not None:
        stored = []
        for k, (first, last, _) in enumerate(batches):
            payload, index = encode_indexed_batch(records[first - 1 : last])
            assert decode_batch(payload) == records[first - 1 : last]
            kept = index if spoil is None else spoil(index)
            stored.append((first, last, payload, kept if indexed[k % len(indexed)] else None))
        folded = replay.fold_stored_newest_first(reversed(stored))
    elif chunk:
        newest_first = batches[::-1]
        folded = sum(
            replay.fold_newest_first(newest_first[i : i + chunk])
            for i in range(0, len(newest_first), chunk)
        )
    else:
        folded = replay.fold(batches)
    state = replay.finish()
    assert folded == len(journal)
    assert state.seq == len(records)
    assert state.positions == one.positions
    if not _reopened(records):
        assert list(state.positions) == list(one.positions)
    assert list(state.commands.items()) == list(one.commands.items())
    assert state.guards == one.guards
    assert state.signals == one.signals and state.approvals == one.approvals


@given(
    st.lists(record, max_size=40),
    st.lists(record, max_size=80),
    st.lists(st.integers(1, 9), min_size=1, max_size=10),
    st.integers(0, 4),
    st.integers(0, 3),
)
def test_replay_equals_the_record_by_record_fold(base, journal, sizes, straddle, chunk) -> None:
    _check(base, journal, sizes, straddle, chunk)


@given(st.lists(record, max_size=80), st.lists(st.integers(1, 9), min_size=1, max_size=10))
def test_replay_without_a_snapshot(journal, sizes) -> None:
    _check([], journal, sizes, 0)


@given(
    st.lists(record, max_size=40),
    st.lists(record, max_size=80),
    st.lists(st.integers(1, 9), min_size=1, max_size=10),
    st.integers(0, 4),
    st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_the_indexed_fold_equals_the_record_by_record_fold(
    base, journal, sizes, straddle, indexed
) -> None:
    """Batches with their replay index, grouped in numpy, mixed with batches without one
    (written before the index existed) in any pattern."""
    _check(base, journal, sizes, straddle, indexed=indexed)


def _count(index: bytes) -> int:
    """Records in a batch, from its index's length (MAGIC, 16-byte keys, n + 1 offsets, kinds)."""
    return (len(index) - len(MAGIC) - 4) // 21


def _keys(index: bytes) -> np.ndarray:
    n = _count(index)
    return np.frombuffer(index, "<u8", 2 * n, len(MAGIC)).reshape(n, 2).copy()


def _with_keys(index: bytes, keys: np.ndarray) -> bytes:
    return MAGIC + keys.astype("<u8").tobytes() + index[len(MAGIC) + keys.size * 8 :]


def _shared_first_half(index: bytes) -> bytes:
    """Every key's first half the same: ids that cannot be told apart by it."""
    keys = _keys(index)
    keys[:, 0] = 7
    return _with_keys(index, keys)


def _rotated_keys(index: bytes) -> bytes:
    """Keys moved to the next record: an index that is not its payload's."""
    return _with_keys(index, np.roll(_keys(index), 1, axis=0))


def _shifted_offsets(index: bytes) -> bytes:
    """Offsets one byte off (the first and last still right): records cut mid-way."""
    n = _count(index)
    at = len(MAGIC) + 16 * n
    offsets = np.frombuffer(index, "<u4", n + 1, at).copy()
    offsets[1:-1] += 1
    return index[:at] + offsets.tobytes() + index[at + 4 * (n + 1) :]


def _misnamed_kinds(index: bytes) -> bytes:
    """Every record of a position called a move."""
    n = _count(index)
    kinds = bytes(MOVE if k in (SAVE, MOVE) else k for k in index[-n:])
    return index[:-n] + kinds


def _merged_saves(index: bytes) -> bytes:
    """Every save under one key that is no id's: saves of different positions in one group
    and no move beside them, which only recomputing the keys from the ids tells."""
    keys, kinds = _keys(index), np.frombuffer(index[-_count(index) :], np.uint8)
    keys[kinds == SAVE] = (7, 7)
    return _with_keys(index, keys)


def _one_byte_short(index: bytes) -> bytes:
    """A truncated index (its last kind byte lost)."""
    return index[:-1]


def _another_format(index: bytes) -> bytes:
    """An index whose magic is not this format's (a later version, or not an index at all)."""
    return b"XXXX" + index[len(b"XXXX") :]


@pytest.mark.parametrize(
    "spoil",
    [
        _shared_first_half,
        _rotated_keys,
        _shifted_offsets,
        _misnamed_kinds,
        _merged_saves,
        _one_byte_short,
        _another_format,
    ],
)
def test_an_index_that_does_not_check_out_is_not_trusted(
    spoil: Callable[[bytes], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold reads such batches record by record, and reaches the same state."""
    walked: list[int] = []
    walk = SnapshotReplay.fold_newest_first

    def counted(self: SnapshotReplay, batches: Any) -> int:
        walked.append(1)
        return walk(self, batches)

    monkeypatch.setattr(SnapshotReplay, "fold_newest_first", counted)
    base: list[Record] = [
        PositionSaved(position=position(i, PositionState.OPEN, 100 + i)) for i in range(6)
    ]
    journal: list[Record] = []
    for k in range(120):
        i = k % 9
        if k % 3:
            journal.append(LevelsMoved(position_id=f"p{i}", sl=k + 1, tp=2000, time_ms=k))
        else:
            state = PositionState.CLOSED if k % 27 == 0 else PositionState.OPEN
            journal.append(PositionSaved(position=position(i, state, 1 + k, k % 5)))
    _check(base, journal, [7, 11], 2, indexed=[True])
    assert not walked  # (sound indexes: nothing walked)
    _check(base, journal, [7, 11], 2, indexed=[True], spoil=spoil)
    assert walked  # the spoiled index was not used
    _check(base, journal, [7, 11], 2, indexed=[True, False], spoil=spoil)


def test_a_large_replay_in_several_chunks() -> None:
    """More positions than one decoding chunk, new and old ones, moved and closed."""
    base: list[Record] = [
        PositionSaved(position=position(i, PositionState.OPEN, 100 + i % 500)) for i in range(3000)
    ]
    journal: list[Record] = []
    for k in range(9000):
        i = (k * 7919) % 5000
        if k % 3:
            journal.append(LevelsMoved(position_id=f"p{i}", sl=k % 900 + 1, tp=2000, time_ms=k))
        else:
            state = PositionState.CLOSED if k % 11 == 0 else PositionState.OPEN
            journal.append(PositionSaved(position=position(i, state, 1 + k % 800, k % 5)))
    _check(base, journal, [500, 777], 3)
    _check(base, journal, [500, 777], 3, chunk=2)
    _check(base, journal, [500, 777], 3, indexed=[True])
    _check(base, journal, [500, 777], 3, indexed=[True, True, False])


def test_nothing_after_the_snapshot() -> None:
    base: list[Record] = [
        PositionSaved(position=position(i, PositionState.OPEN, 5)) for i in range(4)
    ]
    _check(base, [], [1], 0)
    replay = SnapshotReplay(None)
    assert replay.seq == 0 and replay.fold([]) == 0
    state = replay.finish()
    assert state.seq == 0 and state.positions == {}


def test_a_snapshot_with_an_id_twice_reads_as_from_snapshot() -> None:
    """Never written so; if it were, the last value counts, in the first one's place."""
    first, again, other = (
        position(1, PositionState.OPEN, 5),
        position(1, PositionState.OPEN, 6),
        position(2, PositionState.OPEN, 7),
    )
    payload = msgspec.msgpack.encode(
        StateSnapshot(
            seq=3, positions=[first, other, again], commands=[], signals=[], approvals=[], guards=[]
        )
    )
    replay = SnapshotReplay(payload)
    replay.fold([(4, 4, encode_batch([LevelsMoved(position_id="p2", sl=8, tp=9, time_ms=1)]))])
    state = replay.finish()
    expected = EngineState.decode_snapshot(payload)
    expected.apply(LevelsMoved(position_id="p2", sl=8, tp=9, time_ms=1), 4)
    assert list(state.positions.items()) == list(expected.positions.items())
    assert state.seq == 4


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 2), st.sampled_from([0, 1, 2, 3])),
        max_size=120,
    ),
    st.sampled_from([0, 1 << 60, (1 << 64) - 64]),
)
def test_grouping_by_position_equals_brute_force(records, base) -> None:
    """Keys that differ only in their low bits (what the packed sort gives up) or only in their
    second half (a shared first half: not told apart, so the fold reads record by record)."""
    from engine.replay import _newest_by_position

    hi = np.array([base + k for k, _, _ in records], np.uint64)
    lo = np.array([part for _, part, _ in records], np.uint64)
    kind = np.array([kd for _, _, kd in records], np.uint8)
    got = _newest_by_position(hi, lo, kind)
    groups: dict[int, list[int]] = {}
    for i, (k, _, kd) in enumerate(records):
        if kd in (1, 2):  # SAVE, MOVE
            groups.setdefault(base + k, []).append(i)
    if any(len({records[i][1] for i in members}) > 1 for members in groups.values()):
        assert got is None
        return
    assert got is not None
    expected = []
    for key in sorted(groups):
        members = groups[key]
        saves = [i for i in members if records[i][2] == 1]
        expected.append((max(members), max(saves, default=-1), min(saves, default=len(records))))
    assert [tuple(map(int, row)) for row in zip(*got, strict=True)] == expected
