"""Two real engines for the routing tests: a fake ownership that places users where a test says,
and a second node that knows the same user and device (its own database, same JWT secret).

Each engine is a single node with its own Postgres database; what makes them "a cluster" here
is only the ownership each consults, which is exactly what the routing code depends on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from gateway.placement import LOCAL, Placement
from gateway.runtime import run
from persistence import accounts
from tests.e2e.conftest import Engine, engine_settings

__all__ = ["PlacedAt", "mirror_device", "start_engine"]


class PlacedAt:
    """An ``Ownership`` whose answers a test sets: ``placements[user_id]``, else local."""

    def __init__(self) -> None:
        self.placements: dict[str, Placement] = {}
        self.asked: list[str] = []

    def locate(self, user_id: str) -> Placement:
        self.asked.append(user_id)
        return self.placements.get(user_id, LOCAL)


async def start_engine(nursery: trio.Nursery, dsn: str, tmp_path: Path, **overrides: Any) -> Engine:
    """An engine on ``dsn`` serving on a free port, with a :class:`PlacedAt` ownership."""
    settings = engine_settings(tmp_path, dsn, **overrides)
    services = await nursery.start(run, settings)
    services.gateway.ownership = PlacedAt()
    base, ws = f"http://127.0.0.1:{settings.port}", f"ws://127.0.0.1:{settings.port}"
    return Engine(services.gateway, base, ws, services)


async def mirror_device(source: Engine, target: Engine, user_id: str, device_id: str) -> None:
    """Make ``target`` know ``user_id`` and ``device_id`` (same ids, same secrets) as
    ``source`` does: in a cluster the registry is shared; here it is copied."""
    user = source.ctx.registry.user(user_id)
    device = source.ctx.registry.device(device_id)
    db = target.ctx.database
    await accounts.insert_user(
        db,
        accounts.UserRow(
            user.id, user.username, user.role, user.password_hash, user.settings, False
        ),
    )
    await accounts.insert_device(
        db,
        accounts.DeviceRow(
            device.id,
            user.id,
            device.name,
            device.account_login,
            device.broker,
            device.created_at,
            False,
        ),
        device.secrets[0][0],
    )
    await target.ctx.registry.load()
