"""The replay index of a journal batch: what each record is, whose it is, where it lies.

Recovery's fold (``engine.replay``) must find, among a million records, the newest one of each
position. Read record by record, that is a decode and a dictionary lookup each: most of a
recovery's time (``bench.recovery``). The journal writer therefore stores, beside each batch's
msgpack list, a small index of it, made once while the batch is encoded anyway:

* the KIND of each record: a position's save, a levels move, history the state does not keep
  (alerts, audit, reconciliation), or any other record;
* for saves and moves, a 128-bit KEY of the position's id (BLAKE2b): the fold groups records by
  position with numpy (a sort of integers, in C), not with a dictionary of strings;
* the byte OFFSET of each record in the payload: only the records the fold keeps are decoded.

Layout (little-endian): ``MAGIC``, then ``n`` keys of 16 bytes, ``n + 1`` uint32 offsets (the
last one is the payload's length), ``n`` kind bytes. The payload is an ordinary msgpack array
(``decode_batch`` reads it), so a batch with no index, or an index that does not check out
against its payload, is folded record by record instead, never misread.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

from engine.records import LevelsMoved, PositionSaved, Record, encode_record
from engine.state import HISTORY_RECORDS, RECORD_HANDLERS

__all__ = [
    "HISTORY",
    "MOVE",
    "OTHER",
    "SAVE",
    "BatchIndex",
    "IndexedBatch",
    "encode_indexed_batch",
    "position_key",
    "read_index",
]

HISTORY, SAVE, MOVE, OTHER = 0, 1, 2, 3
"""Record kinds, as the fold treats them."""

MAGIC = b"TWRI\x01\x00\x00\x00"
"""Format and version (8 bytes: the keys that follow stay 8-byte aligned)."""

_KEY_BYTES = 16
_NO_KEY = bytes(_KEY_BYTES)
_KINDS: dict[type, int] = {
    kind: HISTORY if kind in HISTORY_RECORDS else OTHER for kind in RECORD_HANDLERS
}
"""Each record type's kind: HISTORY where the fold's own handler keeps nothing (so the two
cannot drift apart), saves and moves as themselves, any other record OTHER."""
_KINDS[PositionSaved], _KINDS[LevelsMoved] = SAVE, MOVE
_ARRAY32 = b"\xdd"


def position_key(position_id: str) -> bytes:
    """The 128-bit key of a position id (two ids sharing one would need ~2**64 positions)."""
    key = _keys.get(position_id)
    if key is None:
        if len(_keys) >= _KEYS_KEPT:
            _keys.clear()
        key = _keys[position_id] = hashlib.blake2b(
            position_id.encode(), digest_size=_KEY_BYTES
        ).digest()
    return key


_keys: dict[str, bytes] = {}
"""Keys already computed: a live position is journaled again and again (every trailing-stop
move), and a lookup costs a tenth of a hash."""
_KEYS_KEPT = 200_000


class IndexedBatch(NamedTuple):
    payload: bytes
    """The batch as one msgpack array of records (``engine.records.decode_batch`` reads it)."""
    record_index: bytes
    """Its replay index (see the module doc)."""


def encode_indexed_batch(records: list[Record]) -> IndexedBatch:
    """Encode a batch and index it (the journal writer's encoder, on the engine's thread: kept
    to comprehensions and C-level maps, ~1 us a record)."""
    parts = list(map(encode_record, records))
    n = len(parts)
    header = _ARRAY32 + n.to_bytes(4, "big")
    offsets = np.empty(n + 1, "<u4")
    offsets[0] = len(header)
    np.cumsum(np.fromiter(map(len, parts), np.int64, n), out=offsets[1:], dtype="<u4")
    offsets[1:] += len(header)
    types = list(map(type, records))
    try:
        kinds = bytes(map(_KINDS.__getitem__, types))
    except KeyError:  # a record type the fold does not know: it will say so when it applies it
        kinds = bytes(_KINDS.get(kind, OTHER) for kind in types)
    key_of, moved, saved, no_key = position_key, LevelsMoved, PositionSaved, _NO_KEY
    keys = [
        key_of(r.position_id)  # type: ignore[union-attr]
        if kind is moved
        else key_of(r.position.id)  # type: ignore[union-attr]
        if kind is saved
        else no_key
        for r, kind in zip(records, types, strict=True)
    ]
    payload = b"".join([header, *parts])
    return IndexedBatch(payload, b"".join([MAGIC, *keys, offsets.tobytes(), kinds]))


class BatchIndex(NamedTuple):
    """One batch's index as arrays (views of the stored bytes, nothing copied)."""

    keys: np.ndarray
    """(n, 2) uint64: each record's position key (zeros for records of no position)."""
    offsets: np.ndarray
    """n + 1 uint32: record ``i`` is ``payload[offsets[i]:offsets[i + 1]]``."""
    kinds: np.ndarray
    """n uint8: HISTORY, SAVE, MOVE or OTHER."""


def read_index(index: bytes | None, payload: bytes, count: int) -> BatchIndex | None:
    """The index of a batch of ``count`` records, or None: there is none, or it does not
    match its payload (the fold then reads that batch record by record)."""
    if index is None or len(index) != len(MAGIC) + 21 * count + 4 or not index.startswith(MAGIC):
        return None
    at = len(MAGIC)
    keys = np.frombuffer(index, "<u8", 2 * count, at).reshape(count, 2)
    at += _KEY_BYTES * count
    offsets = np.frombuffer(index, "<u4", count + 1, at)
    kinds = np.frombuffer(index, np.uint8, count, at + 4 * (count + 1))
    if (
        int(offsets[-1]) != len(payload)
        or bool(np.any(offsets[1:] <= offsets[:-1]))
        or bool(np.any(kinds > OTHER))
        or offsets[0] != 5
        or payload[:5] != _ARRAY32 + count.to_bytes(4, "big")
    ):
        return None
    return BatchIndex(keys, offsets, kinds)
