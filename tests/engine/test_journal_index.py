"""The replay index beside each journal batch (engine.journal_index): every record's kind, key
and byte range, checked one record at a time against the payload it indexes."""

from __future__ import annotations

import hashlib

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from engine import journal_index
from engine.journal_index import (
    HISTORY,
    MOVE,
    OTHER,
    SAVE,
    encode_indexed_batch,
    position_key,
    read_index,
)
from engine.records import (
    AlertRaised,
    AuditRecorded,
    LevelsMoved,
    PositionSaved,
    ReconciliationRecorded,
    Record,
    decode_batch,
)
from tests.engine.hypothesis_records import record

_ONE = msgspec.msgpack.Decoder(Record)


def _kind(r: Record) -> int:
    if isinstance(r, PositionSaved):
        return SAVE
    if isinstance(r, LevelsMoved):
        return MOVE
    if isinstance(r, AlertRaised | AuditRecorded | ReconciliationRecorded):
        return HISTORY
    return OTHER


@given(st.lists(record, min_size=1, max_size=60))
def test_each_record_is_where_the_index_says_with_its_kind_and_key(records) -> None:
    payload, index = encode_indexed_batch(records)
    assert decode_batch(payload) == records  # an ordinary batch for every other reader
    parsed = read_index(index, payload, len(records))
    assert parsed is not None
    for i, r in enumerate(records):
        start, end = int(parsed.offsets[i]), int(parsed.offsets[i + 1])
        assert _ONE.decode(payload[start:end]) == r
        assert parsed.kinds[i] == _kind(r)
        pid = (
            r.position.id
            if isinstance(r, PositionSaved)
            else r.position_id
            if isinstance(r, LevelsMoved)
            else None
        )
        expected = (
            bytes(16) if pid is None else hashlib.blake2b(pid.encode(), digest_size=16).digest()
        )
        assert parsed.keys[i].astype("<u8").tobytes() == expected


def test_an_index_for_another_payload_or_count_is_refused() -> None:
    records: list[Record] = [
        LevelsMoved(position_id=f"p{i}", sl=i, tp=None, time_ms=i) for i in range(5)
    ]
    payload, index = encode_indexed_batch(records)
    other, _ = encode_indexed_batch(records[:4])
    assert read_index(index, payload, 5) is not None
    assert read_index(index, other, 5) is None  # ends elsewhere
    assert read_index(index, payload, 4) is None  # another size
    assert read_index(None, payload, 5) is None
    assert read_index(index[:-1], payload, 5) is None


def test_keys_stay_the_same_when_the_cache_is_emptied(monkeypatch) -> None:
    monkeypatch.setattr(journal_index, "_KEYS_KEPT", 3)
    monkeypatch.setattr(journal_index, "_keys", {})
    first = [position_key(f"cache{i}") for i in range(10)]  # emptied three times on the way
    assert len(journal_index._keys) <= 3
    assert [position_key(f"cache{i}") for i in range(10)] == first
    assert len(set(first)) == 10
