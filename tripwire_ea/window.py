"""The window of command ids the bridge has executed, kept on disk across restarts.

The protocol's idempotency rule (docs/protocol.md, "Commands are idempotent") asks the EA never
to execute a command id twice: a repeat is answered with the stored ack. A process can die at
any instruction, so the order of writes is what makes the rule hold:

1. before ``order_send``, the id is written as *started* (and fsynced);
2. ``order_send`` runs;
3. the ack is written under the id (and fsynced), then sent.

A bridge killed between 1 and 3 finds a started id without an ack at its next start; it never
sends that request again, it looks in the terminal for what happened (``Terminal.resolve``).
Every write replaces the file atomically (a temporary file, fsync, rename, fsync of the folder),
so a crash mid-write leaves the old window or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from pathlib import Path

import msgspec

from protocol.device import Ack

__all__ = ["CommandWindow", "Entry"]

MIN_CAPACITY = 1000
"""The protocol's default ``command_window``: a smaller window is never kept."""


class Entry(msgspec.Struct, kw_only=True):
    command_id: str
    kind: str
    """The command's ``type``: ``open``, ``close``, ``partial_close``, ``modify``."""
    started_ms: int
    ticket: int | None = None
    """The position's ticket (closes and modifies)."""
    client_id: str | None = None
    """The order comment of an open, by which the terminal's history finds it."""
    ack: Ack | None = None
    """The stored answer; None while the command is in progress (or was when the bridge died)."""


class _File(msgspec.Struct):
    v: int
    entries: list[Entry]


class CommandWindow:
    """The executed command ids, newest last, persisted at ``path`` on every change."""

    def __init__(self, path: Path, capacity: int = MIN_CAPACITY) -> None:
        self.path = path
        self.capacity = max(capacity, MIN_CAPACITY)
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        if path.exists():
            stored = msgspec.json.decode(path.read_bytes(), type=_File)
            self._entries.update((e.command_id, e) for e in stored.entries)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, command_id: str) -> Entry | None:
        return self._entries.get(command_id)

    def pending(self) -> list[Entry]:
        """Commands started and never answered: the bridge died inside ``order_send``."""
        return [e for e in self._entries.values() if e.ack is None]

    def resize(self, capacity: int) -> None:
        """Keep at least ``capacity`` ids (the welcome's ``command_window``)."""
        self.capacity = max(capacity, MIN_CAPACITY)

    def start(
        self,
        command_id: str,
        kind: str,
        now_ms: int,
        *,
        ticket: int | None = None,
        client_id: str | None = None,
    ) -> Entry:
        """Record ``command_id`` as in progress, durably, before anything is sent to the broker."""
        entry = Entry(
            command_id=command_id, kind=kind, started_ms=now_ms, ticket=ticket, client_id=client_id
        )
        self._entries[command_id] = entry
        self._entries.move_to_end(command_id)
        self._save()
        return entry

    def finish(self, command_id: str, ack: Ack) -> None:
        """Store the answer under ``command_id``, durably, before it is sent."""
        entry = self._entries[command_id]
        entry.ack = ack
        self._save()

    def _evict(self) -> None:
        # The oldest answered ids go first; an unanswered one stays until it is resolved.
        excess = len(self._entries) - self.capacity
        for command_id in [cid for cid, e in self._entries.items() if e.ack is not None]:
            if excess <= 0:
                break
            del self._entries[command_id]
            excess -= 1

    def _save(self) -> None:
        self._evict()
        data = msgspec.json.encode(_File(v=1, entries=list(self._entries.values())))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable. Windows cannot open a folder for fsync; NTFS journals
    the rename's metadata, which is what this buys on POSIX."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
