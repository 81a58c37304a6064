"""What a test can see of other processes, from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path


def running(pid: int) -> bool:
    """Is ``pid`` running: not gone, and not a zombie that nobody has reaped (a container's
    init may never reap an orphan)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int, command_part: bytes) -> list[int]:
    """The running children of ``pid`` whose command line contains ``command_part``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and command_part in cmdline:
            found.append(int(entry.name))
    return found
