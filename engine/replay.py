"""Recovery's fold: a snapshot and every journal batch after it, read newest record first.

Start-up, crash recovery and the snapshotter rebuild the engine's state from the newest snapshot
and the journal after it (``persistence.recovery``). The result must be exactly the fold of
:meth:`~engine.state.EngineState.apply` over every record; this module computes it without
applying most of them (``bench.recovery``: 100,000 positions and 1,000,000 records after the
snapshot).

Rules of operation
------------------
* **Newest first.** Records carry resulting values (engine.records), so a position's final
  value is its LAST save (or its snapshot value), with the sl, tp and time of the last
  :class:`~engine.records.LevelsMoved` after that save applied on top; a final state
  (closed, rejected...) removes it, and a move with no position under it changes nothing.
  Walking the journal backwards, the first record seen of a position is therefore the one
  that decides it, and every older one is skipped after a single dictionary lookup: it is
  never kept, so it is freed with its batch, while that batch is still in the CPU's caches.
  (Walked forwards, each of the 600,000 superseded moves of ``bench.recovery`` replaced an
  older one in a dictionary of 100,000 and freed it wherever it was in memory: on the 2-core
  VM that was most of the fold's time. What is left is mostly the lookups themselves.)
* **Nothing decoded that is superseded.** Saved positions stay undecoded
  (:class:`~engine.records.PositionSavedRaw`) and so do the snapshot's positions: only the one
  value each position ends with is decoded, once. History records (alerts, audit,
  reconciliation) are skipped unread: the state keeps no history.
* **The other records in order.** Commands, signals, approvals and guards touch nothing a
  position record touches; they are collected on the way back and applied oldest first at the
  end, through the same handlers as :meth:`~engine.state.EngineState.apply`.
* **The same order.** The recovered ``positions`` dict lists the snapshot's positions in the
  snapshot's order, then the others in the order of their first save, as the record-by-record
  fold does (unless a position were saved again after a final state, which ids never are).

* **Indexed batches in bulk.** A batch written with its replay index (``engine.journal_index``:
  each record's kind, its position's 128-bit key, its offset) is not decoded record by record. A
  run of such batches is grouped by position in numpy (one sort of integers that pack each key's
  high bits with the record's index, then ``reduceat`` for each position's newest save and
  oldest save), and only each position's newest save and newest move are cut out of the payloads
  and decoded, in one call each. The result is the one the newest-first walk above reaches;
  batches without an index (written before it) are walked. An index that does not check out is
  ignored for its run: offsets that do not fit the payload, records that do not decode as their
  kind, two ids sharing a key's first half, a move and a save of one group with different ids,
  or a sample of ~1,000 keys that are not their ids' (recomputing every key would cost more than
  the rest of the fold).

``tests/engine/test_replay.py`` holds both results equal to the record-by-record fold on random
sequences (hypothesis), dictionary order included, and spoiled indexes ignored.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
import numpy as np

from engine.journal_index import MOVE, OTHER, SAVE, BatchIndex, position_key, read_index
from engine.lifecycle import FINAL_STATES
from engine.records import (
    HistorySkipped,
    LevelsMoved,
    PositionSavedRaw,
    decode_batch,
    decode_batch_for_replay,
    decode_positions,
    position_head_of,
    position_ids_of,
)
from engine.state import RECORD_HANDLERS, EngineState, StateSnapshot

__all__ = ["SnapshotReplay"]


def _lazy_snapshot_type() -> type[msgspec.Struct]:
    """:class:`~engine.state.StateSnapshot` with its positions left undecoded (derived from its
    fields, so the two cannot drift apart)."""
    fields: list[Any] = []
    for f in msgspec.structs.fields(StateSnapshot):
        kind = list[msgspec.Raw] if f.name == "positions" else f.type
        fields.append((f.name, kind))
    return msgspec.defstruct("LazyStateSnapshot", fields, kw_only=True, frozen=True)


_LAZY_SNAPSHOT = _lazy_snapshot_type()
_LAZY_SNAPSHOT_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(_LAZY_SNAPSHOT)
_HISTORY = frozenset(HistorySkipped.__subclasses__())
_MOVES_DECODER: msgspec.msgpack.Decoder[list[LevelsMoved]] = msgspec.msgpack.Decoder(
    list[LevelsMoved]
)
_SAVES_DECODER: msgspec.msgpack.Decoder[list[PositionSavedRaw]] = msgspec.msgpack.Decoder(
    list[PositionSavedRaw]
)
_ARRAY32 = b"\xdd"
_KEYS_CHECKED = 1024
_INDEX_BITS_MAX = 40
"""Records per fold above which the packed sort would keep too few bits of the keys (2**40)."""
_CHUNK = 1024
"""Positions decoded per call at the end: few calls, and each chunk still in the caches when
its moves are applied."""


def _newest_by_position(
    hi: np.ndarray, lo: np.ndarray, kind: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For each position (key ``hi``, ``lo``) among the records of ``kind`` SAVE or MOVE:
    the index of its newest record, of its newest save (-1: none) and of its oldest save
    (``len(kind)``: none), positions in the order of their keys. None if two ids share ``hi``
    (then the fold reads record by record)."""
    ours = np.flatnonzero((kind == SAVE) | (kind == MOVE))
    if not len(ours):
        empty = np.empty(0, np.intp)
        return empty, empty, empty
    # Records sorted by key and, within a key, oldest first: the key's high bits and the
    # record's index packed in one integer, so that a plain sort of integers does it (a third
    # of the time of an argsort of the keys). Two keys that only differ in the bits given up
    # are then interleaved in one group: seen below, and sorted again by whole keys.
    bits = len(kind).bit_length()
    order = None
    if bits <= _INDEX_BITS_MAX:
        low = np.uint64((1 << bits) - 1)
        packed = (hi[ours] & ~low) | ours.astype(np.uint64)
        packed.sort()
        order = (packed & low).astype(np.intp)
        truncated = packed >> np.uint64(bits)
        same = truncated[1:] == truncated[:-1]
        grouped = hi[order]
        if bool(np.any(grouped[1:][same] != grouped[:-1][same])):
            order = None
    if order is None:
        order = ours[np.argsort(hi[ours], kind="stable")]
        grouped = hi[order]
        same = grouped[1:] == grouped[:-1]
    # The second half of the key must be the same throughout each group: two ids sharing a
    # first half (about once in 2**32 folds of 100,000 positions) are not told apart here.
    if bool(np.any(lo[order][1:][same] != lo[order][:-1][same])):
        return None
    starts = np.concatenate(([0], np.flatnonzero(~same) + 1))
    ends = np.concatenate((starts[1:] - 1, [len(order) - 1]))
    is_save = kind[order] == SAVE
    return (
        order[ends],  # each group is oldest first
        np.maximum.reduceat(np.where(is_save, order, -1), starts),
        np.minimum.reduceat(np.where(is_save, order, len(kind)), starts),
    )


class SnapshotReplay:
    """The state of a snapshot (``None``: the empty state) plus the journal after it.

    Use: ``replay = SnapshotReplay(payload)``; read the batches after ``replay.seq`` and fold
    them, all at once (:meth:`fold`) or newest first in chunks (:meth:`fold_newest_first`);
    then ``replay.finish()`` for the :class:`EngineState`.
    """

    __slots__ = (
        "_folded",
        "_ids",
        "_latest",
        "_others",
        "_raws",
        "_saved",
        "_snapshot",
        "_snapshot_seq",
        "seq",
    )

    def __init__(self, snapshot: bytes | None) -> None:
        self._snapshot: Any = None if snapshot is None else _LAZY_SNAPSHOT_DECODER.decode(snapshot)
        self.seq: int = 0 if self._snapshot is None else self._snapshot.seq
        """The sequence number of the last record folded in (the snapshot's, until then)."""
        self._snapshot_seq = self.seq
        raws: list[msgspec.Raw] = [] if self._snapshot is None else self._snapshot.positions
        ids = position_ids_of(raws)
        self._latest: dict[str, Any] = dict.fromkeys(ids)
        """Position id -> None (a position of the snapshot with no record yet), its newest
        record (a LevelsMoved, or the raw position of a save), or ``(move, raw)``: its newest
        record is a move, and the raw position is the newest save before it.

        The snapshot's ids come first, so the dict is made at its full size, its keys are made
        together (the fold's lookups touch them a million times: scattered, they cost a cache
        miss more each) and, at the end, its values are read in the snapshot's order."""
        if len(self._latest) != len(ids):  # never written so: as from_snapshot, the last wins
            by_id = dict(zip(ids, raws, strict=True))
            ids, raws = list(by_id), list(by_id.values())
        self._ids, self._raws = ids, raws
        self._saved: list[str] = []
        """The ids of every save, newest first (for the order of positions new since the
        snapshot)."""
        self._others: list[Any] = []
        """Every other record that changes the state, newest first."""
        self._folded = False
        """Has any record been folded (the fold goes from the newest back)?"""

    def fold(self, batches: Sequence[tuple[int, int, bytes]]) -> int:
        """Fold every batch after the snapshot, given oldest first as ``(first_seq, last_seq,
        payload)``; see :meth:`fold_newest_first`. Returns how many records were folded."""
        return self.fold_newest_first(reversed(batches))

    def fold_newest_first(self, batches: Iterable[tuple[int, int, bytes]]) -> int:
        """Fold batches given NEWEST first; call it again with older ones (the journal read
        backwards, in chunks, while it is read). Records at or before the snapshot's seq are
        skipped (the oldest batch may straddle it). Returns how many records were folded."""
        snapshot_seq = self._snapshot_seq
        latest = self._latest
        get = latest.get
        saved, others, history = self._saved, self._others, _HISTORY
        head_of = position_head_of
        folded = 0
        for first, last, payload in batches:
            self.seq = max(self.seq, last)
            records = decode_batch_for_replay(payload)
            if first <= snapshot_seq:
                del records[: snapshot_seq - first + 1]
            folded += len(records)
            self._folded = self._folded or bool(records)
            # One pass, newest first: the first record kept for a position is its newest; an
            # older one costs one lookup and is freed with its batch, still in the caches.
            for record in reversed(records):
                kind = type(record)
                if kind is LevelsMoved:
                    pid = record.position_id  # type: ignore[union-attr]
                    if get(pid) is None:
                        latest[pid] = record
                elif kind is PositionSavedRaw:
                    raw = record.position  # type: ignore[union-attr]
                    pid = head_of(raw).id
                    saved.append(pid)
                    newer = get(pid)
                    if newer is None:
                        latest[pid] = raw
                    elif type(newer) is LevelsMoved:  # the position that newer move applies to
                        latest[pid] = (newer, raw)
                elif kind not in history:
                    others.append(record)
        return folded

    def fold_stored_newest_first(
        self, batches: Iterable[tuple[int, int, bytes, bytes | None]]
    ) -> int:
        """Fold batches as the journal stores them, ``(first_seq, last_seq, payload, index)``
        with the index None where the batch has none, given NEWEST first. Each run of indexed
        batches is folded at once (:meth:`fold_indexed_newest_first`), every other batch
        record by record. Returns how many records were folded."""
        folded = 0
        run: list[tuple[int, int, bytes, BatchIndex]] = []
        for first, last, payload, stored_index in batches:
            index = read_index(stored_index, payload, last - first + 1)
            if index is not None:
                run.append((first, last, payload, index))
                continue
            folded += self.fold_indexed_newest_first(run)
            run = []
            folded += self.fold_newest_first([(first, last, payload)])
        return folded + self.fold_indexed_newest_first(run)

    def fold_indexed_newest_first(
        self, batches: Sequence[tuple[int, int, bytes, BatchIndex]]
    ) -> int:
        """Fold batches that carry their replay index (``engine.journal_index``), all of them
        OLDER than anything folded so far (in any order among themselves). The result is the
        one :meth:`fold_newest_first` reaches; the records are grouped by position in numpy
        and only the newest save and the newest move of each position are decoded. Batches
        whose index does not check out against their payload are folded record by record.
        Returns how many records were folded."""
        if not batches:
            return 0
        batches = sorted(batches, key=lambda b: b[0])
        snapshot_seq = self._snapshot_seq
        parts: list[tuple[np.ndarray, ...]] = []
        payloads: list[bytes] = []
        for first, last, payload, index in batches:
            self.seq = max(self.seq, last)
            # The oldest batch may straddle the snapshot.
            skip = min(len(index.kinds), max(0, snapshot_seq - first + 1))
            count = len(index.kinds) - skip
            owner = np.full(count, len(payloads), np.int32)
            keys, offsets = index.keys[skip:], index.offsets[skip:]
            parts.append(
                (keys[:, 0], keys[:, 1], offsets[:-1], offsets[1:], index.kinds[skip:], owner)
            )
            payloads.append(payload)
        hi, lo, start, end, kind, owner = (
            np.concatenate(column) for column in zip(*parts, strict=True)
        )

        def cut(at: np.ndarray) -> bytes:
            """The records at ``at`` (indices into the run) as one msgpack array."""
            spans = zip(owner[at].tolist(), start[at].tolist(), end[at].tolist(), strict=True)
            return b"".join(
                [_ARRAY32 + len(at).to_bytes(4, "big")] + [payloads[b][i:j] for b, i, j in spans]
            )

        groups = _newest_by_position(hi, lo, kind)
        if groups is None:
            return self._fold_unindexed(batches)
        newest, newest_save, first_save = groups
        moved = kind[newest] == MOVE
        has_save = newest_save >= 0
        try:
            moves = _MOVES_DECODER.decode(cut(newest[moved]))
            raws = [saved.position for saved in _SAVES_DECODER.decode(cut(newest_save[has_save]))]
            others = decode_batch(cut(np.flatnonzero(kind == OTHER)))
        except msgspec.DecodeError:  # offsets or kinds that do not match the payload
            return self._fold_unindexed(batches)
        move_ids, save_ids = [m.position_id for m in moves], position_ids_of(raws)
        # Each group: its newest record is a save (a), or a move with a save before it (b), or
        # a move alone (c); indices into moves and raws.
        at_move, at_save = np.cumsum(moved) - 1, np.cumsum(has_save) - 1
        a, b, c = ~moved, moved & has_save, moved & ~has_save

        def pick(items: list[Any], at: np.ndarray) -> list[Any]:
            return list(map(items.__getitem__, at.tolist()))

        b_moves, b_raws = pick(moves, at_move[b]), pick(raws, at_save[b])
        b_ids = pick(move_ids, at_move[b])
        # The index must belong to its payload: a move and a save grouped together are of one
        # id, and keys are their ids' (checked on a sample: computing a key costs more than
        # the rest of a record's share of the fold).
        if b_ids != pick(save_ids, at_save[b]) or not self._keys_match(
            hi, lo, newest, moved, at_move, at_save, move_ids, save_ids
        ):
            return self._fold_unindexed(batches)
        found = [
            (pick(save_ids, at_save[a]), pick(raws, at_save[a])),
            (b_ids, list(zip(b_moves, b_raws, strict=True))),
            (pick(move_ids, at_move[c]), pick(moves, at_move[c])),
        ]
        latest = self._latest
        if not self._folded:  # nothing newer folded yet: each group's value is final
            for ids, values in found:
                latest.update(zip(ids, values, strict=True))
        else:  # as fold_newest_first: what newer batches decided stands, a newer move takes
            # this run's newest save as its base, and the rest only fills the gaps
            get = latest.get
            for pid, raw in zip(save_ids, raws, strict=True):
                newer = get(pid)
                if type(newer) is LevelsMoved:
                    latest[pid] = (newer, raw)
            for ids, values in found:
                for pid, value in zip(ids, values, strict=True):
                    if get(pid) is None:
                        latest[pid] = value
        # The ids of the saves, newest first by their oldest save (see _saved).
        with_save = np.flatnonzero(has_save)
        by_first_save = with_save[np.argsort(first_save[with_save], kind="stable")[::-1]]
        self._saved.extend(pick(save_ids, at_save[by_first_save]))
        self._others.extend(reversed(others))
        self._folded = True
        return len(kind)

    @staticmethod
    def _keys_match(
        hi: np.ndarray,
        lo: np.ndarray,
        newest: np.ndarray,
        moved: np.ndarray,
        at_move: np.ndarray,
        at_save: np.ndarray,
        move_ids: list[str],
        save_ids: list[str],
    ) -> bool:
        """Does each of ~1,000 groups, spread over all of them, have its id's key?"""
        step = max(1, len(newest) // _KEYS_CHECKED)
        for g in range(0, len(newest), step):
            pid = move_ids[at_move[g]] if moved[g] else save_ids[at_save[g]]
            key = np.array([hi[newest[g]], lo[newest[g]]], "<u8").tobytes()
            if position_key(pid) != key:
                return False
        return True

    def _fold_unindexed(self, batches: Sequence[tuple[int, int, bytes, BatchIndex]]) -> int:
        """``batches`` (oldest first) folded record by record, their index ignored."""
        return self.fold_newest_first((f, last, p) for f, last, p, _ in reversed(batches))

    def finish(self) -> EngineState:
        """The folded state."""
        snapshot = self._snapshot
        if snapshot is None:
            state = EngineState()
        else:
            state = EngineState.from_snapshot(
                StateSnapshot(
                    seq=snapshot.seq,
                    positions=[],
                    commands=snapshot.commands,
                    signals=snapshot.signals,
                    approvals=snapshot.approvals,
                    guards=snapshot.guards,
                )
            )
        state.seq = self.seq
        latest, ids, raws = self._latest, self._ids, self._raws
        newest = list(latest.values())
        if len(latest) > len(ids):  # positions saved since the snapshot, by first save
            fresh = dict(itertools.islice(latest.items(), len(ids), None))
            new = list(dict.fromkeys(filter(fresh.__contains__, reversed(self._saved))))
            ids = ids + new
            newest = newest[: len(ids) - len(new)] + list(map(fresh.__getitem__, new))
        for start in range(0, len(ids), _CHUNK):
            end = start + _CHUNK
            self._settle(state.positions, ids[start:end], newest[start:end], raws[start:end])
        for record in reversed(self._others):
            RECORD_HANDLERS[type(record)](state, record)
        self._snapshot = None
        self._latest, self._saved, self._others, self._folded = {}, [], [], True
        self._ids, self._raws = [], []
        return state

    def _settle(
        self,
        positions: dict[str, Any],
        ids: list[str],
        newest: list[Any],
        raws: list[msgspec.Raw],
    ) -> None:
        """Decode the final value of each of ``ids`` (``newest``: its newest record or None,
        ``raws``: its snapshot value, shorter for positions new since the snapshot) into
        ``positions``."""
        kept: list[str] = []
        bases: list[msgspec.Raw] = []  # what each value is decoded from
        moves: list[Any] = []
        saved: list[bool] = []
        for pid, record, raw in itertools.zip_longest(ids, newest, raws):
            kind = type(record)
            if record is None:  # untouched since the snapshot
                base, move = raw, None
            elif kind is tuple:  # moved after a save
                move, base = record
            elif kind is LevelsMoved:  # moved, never saved since the snapshot
                base, move = raw, record
                if base is None:
                    continue  # a move of a position that never was changes nothing
            else:  # saved
                base, move = record, None
            kept.append(pid)
            bases.append(base)
            moves.append(move)
            saved.append(base is not raw)
        final, set_field = FINAL_STATES, msgspec.structs.force_setattr
        for pid, position, move, from_save in zip(
            kept, decode_positions(bases), moves, saved, strict=True
        ):
            if from_save and position.state in final and not position.fill_pending:
                continue  # as EngineState._position: a final save removes the position
            if move is not None:
                # As EngineState._levels: Position.with_changes(time_ms, sl=, tp=). Set on the
                # position just decoded, which nothing else holds yet: as if decoded so.
                set_field(position, "sl", move.sl)
                set_field(position, "tp", move.tp)
                set_field(position, "updated_ms", move.time_ms)
            positions[pid] = position
