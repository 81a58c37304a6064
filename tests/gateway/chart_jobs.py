"""Jobs for the chart pool's tests, run in its worker processes (so: a module of their own,
importable by a spawned process, that imports nothing heavy)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


def gated(folder: str, timeout_s: float = 30.0) -> bytes:
    """Mark itself running (a file in ``folder``), wait until ``folder/open`` exists, then
    unmark itself: the files present at any moment are the jobs running at that moment."""
    mark = Path(folder) / f"running-{os.getpid()}-{uuid.uuid4().hex}"
    mark.touch()
    try:
        deadline = time.monotonic() + timeout_s
        while not (Path(folder) / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return b"done"
    finally:
        mark.unlink()


def worker_pid() -> bytes:
    """The id of the process that ran it."""
    return str(os.getpid()).encode()
