"""What the journal tests share: a record type, its codec, a projection and a reader."""

from __future__ import annotations

from typing import Any

import msgspec

from persistence import Database, JournalReader


class Rec(msgspec.Struct, frozen=True, kw_only=True):
    """A stand-in for the engine's journal records (the real union lives in ``actors``)."""

    kind: str
    n: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[Rec])

AUDIT = "INSERT INTO audit_log (actor_id, action, outcome, detail) VALUES ($1, $2, 'ok', $3)"


def encode_batch(records: list[Rec]) -> bytes:
    return _encoder.encode(records)


def audit_projection(records: list[Rec]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """One audit row per record, so tests can count projected rows."""
    return [(AUDIT, [(r.kind, "test", {"n": r.n}) for r in records])]


async def read_all(db: Database, after_seq: int = 0) -> list[tuple[int, Rec]]:
    """Every record after ``after_seq`` as ``(seq, record)``, checking batch contiguity."""
    out: list[tuple[int, Rec]] = []
    expected_first: int | None = None
    async for first, last, payload in JournalReader(db).read_batches(after_seq, chunk=3):
        records = _decoder.decode(payload)
        assert len(records) == last - first + 1
        if expected_first is not None:
            assert first == expected_first, "batches must be contiguous and in order"
        expected_first = last + 1
        out.extend((first + i, r) for i, r in enumerate(records) if first + i > after_seq)
    return out


async def audit_count(db: Database) -> int:
    return int(await db.fetchval("SELECT count(*) FROM audit_log"))
