"""The journal read back: its batches in order, as recovery and the snapshotter fold them.

Nothing here writes; :mod:`persistence.journal_writer` appends, and
:mod:`persistence.snapshot_store` compacts.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

from persistence import journal_sql
from persistence.db import Database

__all__ = ["JournalReader"]

_BEYOND_EVERY_SEQ = (1 << 63) - 1  # the largest bigint


class JournalReader:
    """The committed batches of the journal in ``db`` (each ``(first_seq, last_seq,
    payload)``: record ``i`` of a payload has seq ``first_seq + i``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def read_batches(
        self, after_seq: int = 0, *, chunk: int = 32
    ) -> AsyncIterator[tuple[int, int, bytes]]:
        """Every batch holding records after ``after_seq``, oldest first, as
        ``(first_seq, last_seq, payload)``; fetched ``chunk`` rows at a time.

        A batch straddling ``after_seq`` is returned whole: skip its records up to
        ``after_seq``.
        """
        while True:
            rows = await self.db.run_with_connection(
                functools.partial(journal_sql.fetch_batches, after_seq=after_seq, limit=chunk)
            )
            for row in rows:
                yield row
            if len(rows) < chunk:
                return
            after_seq = rows[-1][1]

    async def read_batches_newest_first(
        self, after_seq: int = 0, *, chunk: int = 32
    ) -> AsyncIterator[list[tuple[int, int, bytes, bytes | None]]]:
        """The batches of :meth:`read_batches`, newest first, ``chunk`` rows per list, each
        with its replay index or None (what recovery folds, see ``engine.replay``; the oldest
        may straddle ``after_seq``)."""
        before = _BEYOND_EVERY_SEQ
        while True:
            rows = await self.db.run_with_connection(
                functools.partial(
                    journal_sql.fetch_batches_newest_first,
                    after_seq=after_seq,
                    before_seq=before,
                    limit=chunk,
                )
            )
            if rows:
                yield rows
            if len(rows) < chunk:
                return
            before = rows[-1][1]
