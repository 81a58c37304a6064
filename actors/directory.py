"""What a node needs to know about users and devices, and where to find its actors.

:class:`Directory` is the node's view of the durable registry (the ``users`` and ``devices``
tables, loaded by the gateway): who owns a device, a user's settings, a device's symbol
overrides. :class:`StaticDirectory` keeps it in memory (tests, the paper set-up).

Partitioning (docs/architecture.md, "Scaling past one machine"): users are assigned to nodes
by a hash of their id; :func:`partition_of` is that hash, and a node serves a user only if it
owns the user's partition. One node owns every partition today; nothing in the actors assumes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Protocol

from engine.sizing import UserSettings

__all__ = ["PARTITIONS", "Directory", "StaticDirectory", "partition_of"]

PARTITIONS = 64


def partition_of(user_id: str, partitions: int = PARTITIONS) -> int:
    """The partition a user belongs to (stable across processes and restarts)."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % partitions


class Directory(Protocol):
    def user_settings(self, user_id: str) -> UserSettings: ...

    def device_owner(self, device_id: str) -> str | None: ...

    def device_overrides(self, device_id: str) -> Mapping[str, str]: ...

    def owns(self, user_id: str) -> bool: ...


class StaticDirectory:
    """An in-memory directory."""

    def __init__(
        self,
        devices: Mapping[str, str] | None = None,
        settings: Mapping[str, UserSettings] | None = None,
        overrides: Mapping[str, Mapping[str, str]] | None = None,
        partitions: Iterable[int] | None = None,
    ) -> None:
        self.devices: dict[str, str] = dict(devices or {})
        self.settings: dict[str, UserSettings] = dict(settings or {})
        self.overrides: dict[str, dict[str, str]] = {
            k: dict(v) for k, v in (overrides or {}).items()
        }
        self.partitions = set(partitions) if partitions is not None else set(range(PARTITIONS))

    def user_settings(self, user_id: str) -> UserSettings:
        return self.settings.get(user_id) or UserSettings()

    def device_owner(self, device_id: str) -> str | None:
        return self.devices.get(device_id)

    def device_overrides(self, device_id: str) -> Mapping[str, str]:
        return self.overrides.get(device_id, {})

    def owns(self, user_id: str) -> bool:
        return partition_of(user_id) in self.partitions
