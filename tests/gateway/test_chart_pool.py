"""The chart pool's limits, with jobs held open by a gate: at most ``workers`` run at once
(counted by the jobs themselves, in their processes), one user past ``per_user`` is refused at
once while others are admitted, and past ``queue`` waiting everybody new is refused; the
worker processes go when the pool has been idle, and come back for the next render."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from gateway.rest.charts import ChartPool
from protocol.errors import RateLimited
from tests.gateway.chart_jobs import gated, worker_pid
from tests.processes import running as process_running


def running(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name.startswith("running-"))


async def until(check, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def test_limits_hold_while_renders_are_under_way(tmp_path: Path) -> None:
    pool = ChartPool(workers=2, per_user=2, queue=2)
    done: list[str] = []
    seen_running: list[int] = []

    async def render(user: str) -> None:
        assert await pool.render(user, gated, str(tmp_path)) == b"done"
        done.append(user)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(render, "alice")
            nursery.start_soon(render, "alice")
            await until(lambda: running(tmp_path) == 2)  # both alice's, in their processes
            with pytest.raises(RateLimited) as refused:
                await pool.render("alice", gated, str(tmp_path))
            assert refused.value.details["retry_after_s"] >= 1
            nursery.start_soon(render, "bob")  # alice is at her limit; bob is not
            nursery.start_soon(render, "carol")
            await until(lambda: pool.waiting == 2)
            with pytest.raises(RateLimited):  # the queue is full: everyone new waits outside
                await pool.render("dave", gated, str(tmp_path))
            assert pool.refused == {"user": 1, "busy": 1}

            async def watch() -> None:
                while len(done) < 4:
                    seen_running.append(running(tmp_path))
                    await trio.sleep(0.005)

            nursery.start_soon(watch)
            await trio.sleep(0.2)  # a window for a third render to start, were the pool to let it
            assert running(tmp_path) == 2 and pool.rendering == 2  # bob and carol still wait
            (tmp_path / "open").touch()
        assert sorted(done) == ["alice", "alice", "bob", "carol"]
        assert max(seen_running) <= 2 and pool.peak == 2 and pool.rendered == 4
        assert pool.waiting == 0 and pool.rendering == 0
        # A user's slots are given back: alice may render again.
        assert await pool.render("alice", gated, str(tmp_path)) == b"done"
    finally:
        pool.close()


async def test_idle_workers_exit_and_come_back(tmp_path: Path) -> None:
    pool = ChartPool(workers=1, per_user=1, queue=0, idle_s=0.5)
    try:
        first = int(await pool.render("alice", worker_pid))
        assert process_running(first)
        await until(lambda: not process_running(first), timeout=30)
        second = int(await pool.render("alice", worker_pid))
        assert second != first and process_running(second)
    finally:
        pool.close()


async def test_a_light_user_goes_before_a_heavy_one_and_takes_its_place(tmp_path: Path) -> None:
    pool = ChartPool(workers=1, per_user=3, queue=2)
    order: list[str] = []
    refused: list[str] = []

    async def render(user: str) -> None:
        try:
            await pool.render(user, gated, str(tmp_path))
        except RateLimited:
            refused.append(user)
        else:
            order.append(user)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(render, "alice")
            await until(lambda: running(tmp_path) == 1)
            for _ in range(2):  # alice fills the queue behind her own render
                nursery.start_soon(render, "alice")
                await trio.sleep(0.05)
            assert pool.waiting == 2
            nursery.start_soon(render, "bob")  # lighter: takes the place of alice's last
            await until(lambda: refused == ["alice"])
            nursery.start_soon(render, "carol")  # lighter than alice still: her other one goes
            await until(lambda: refused == ["alice", "alice"])
            nursery.start_soon(render, "dave")  # as light as bob and carol, and later: refused
            await until(lambda: refused == ["alice", "alice", "dave"])
            (tmp_path / "open").touch()
        assert order == ["alice", "bob", "carol"]
        assert pool.refused == {"busy": 3}
    finally:
        pool.close()
