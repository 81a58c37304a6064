"""Snapshot payloads are stored compressed, and read back exactly; hostile frames are refused."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from persistence import Database, SnapshotStore, snapshot_codec
from protocol.errors import StorageError


@given(st.binary(max_size=4096))
def test_round_trip(payload: bytes) -> None:
    assert snapshot_codec.unpack(snapshot_codec.pack(payload)) == payload


def test_a_payload_from_before_compression_reads_as_stored() -> None:
    legacy = b"\x93\x01\x02\x03"  # msgpack: never a zstd frame header
    assert snapshot_codec.unpack(legacy) == legacy


@pytest.mark.parametrize(
    "stored",
    [
        snapshot_codec.pack(b"x" * 10_000)[:-6],  # truncated
        snapshot_codec.pack(b"x" * 10_000)[:4] + b"\xff" * 20,  # garbage after the magic
        zstandard.ZstdCompressor(write_content_size=False).compress(b"no size"),  # no size
    ],
)
def test_corrupt_or_sizeless_frames_are_storage_errors(stored: bytes) -> None:
    with pytest.raises(StorageError):
        snapshot_codec.unpack(stored)


async def test_snapshots_are_stored_compressed(db: Database) -> None:
    journal = SnapshotStore(db)
    state = b"positions " * 50_000
    await journal.write_snapshot(7, state)
    row = await db.fetchrow("SELECT payload, size FROM snapshots WHERE seq = 7")
    assert row["size"] == len(state)  # the state's own size
    assert len(row["payload"]) < len(state) // 20
    assert await journal.latest_snapshot() == (7, state)


async def test_a_legacy_row_is_read_and_a_corrupt_one_refused(db: Database) -> None:
    journal = SnapshotStore(db)
    insert = "INSERT INTO snapshots (seq, payload, size) VALUES ($1, $2, $3)"
    await db.execute(insert, 3, b"\x92\x01\x02", 3)
    assert await journal.latest_snapshot() == (3, b"\x92\x01\x02")
    await db.execute(insert, 4, snapshot_codec.pack(b"state" * 100)[:-5], 500)
    with pytest.raises(StorageError):
        await journal.latest_snapshot()
