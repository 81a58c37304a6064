"""How a snapshot's payload is stored: compressed with zstd.

A snapshot of 100,000 positions is ~11 MB of msgpack and ~1.2 MB compressed (level 1: ~25 ms
to compress, in the snapshotter's idle-priority process; ~15 ms to decompress at recovery).
What it saves is not disk: each snapshot moves the previous one and the new one through
Postgres's socket, its TOAST compression and its WAL, and on a kernel built without full
preemption that long system-call work in other processes delays the engine's own wake-ups
(README, ``snapshot_p99_ratio``). A payload stored before compression was introduced has no
zstd frame header and is returned as stored.
"""

from __future__ import annotations

import zstandard

from protocol.errors import StorageError

__all__ = ["MAX_SNAPSHOT_BYTES", "pack", "unpack"]

_MAGIC = b"\x28\xb5\x2f\xfd"  # every zstd frame starts so; msgpack never does (0x28: the int 40)
_LEVEL = 1  # ~9x on a snapshot; higher levels gain little and cost the snapshotter more
MAX_SNAPSHOT_BYTES = 4 << 30
"""The largest decompressed snapshot accepted (a corrupt frame header must not allocate more)."""


def pack(payload: bytes) -> bytes:
    # The checksum: a snapshot is stored in parts (snapshot_sql), and a wrong part must fail
    # the read, not decode into another state.
    return zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True).compress(payload)


def unpack(stored: bytes) -> bytes:
    """The payload :func:`pack` was given (or ``stored`` itself, from before compression).

    Raises:
        StorageError: the stored frame is corrupt or declares an impossible size.
    """
    if not stored.startswith(_MAGIC):
        return stored
    try:
        size = zstandard.frame_content_size(stored)
        if not 0 <= size <= MAX_SNAPSHOT_BYTES:  # -1: unknown, which pack() never writes
            raise StorageError("snapshot payload declares no usable size", declared=size)
        return zstandard.ZstdDecompressor().decompress(stored)
    except zstandard.ZstdError as exc:
        raise StorageError("snapshot payload is corrupt", reason=str(exc)) from exc
