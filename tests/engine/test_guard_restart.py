"""The drawdown guard across a restart: its block follows the live level after recovery.

A user's guard is journaled as :class:`~engine.records.GuardSaved` records; a restart folds
them (``engine.replay``, as ``persistence.recovery`` does) and restores a fresh
:class:`~engine.user.UserCore` from the fold. The block saved at critical used to come back
with the level left at normal, and since the guard decided only on level *changes*, an account
back at 1 % drawdown kept its opens blocked until a new dip past the warning level.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.guards import DrawdownLimits, GuardLevel
from engine.records import GuardSaved, Record, encode_batch
from engine.replay import SnapshotReplay
from engine.sizing import UserSettings
from engine.user import DeviceInfo, UserCore
from tests.engine.user_helpers import GOLD, T0, approved, core

SAVE_EVERY = 10_000  # Timing.guard_save_interval: observations this far apart are all saved


def restarted(records: list[Record], **settings: object) -> UserCore:
    """A new core restored from the journal fold of ``records``, as a start-up would."""
    replay = SnapshotReplay(None)
    replay.fold([(1, len(records), encode_batch(records))])
    view = replay.finish().user_view("u1")
    c = UserCore("u1", UserSettings(**settings))  # type: ignore[arg-type]
    c.restore(view.positions, view.commands, view.approvals, view.guard)
    c.on_device(DeviceInfo("d1", {"XAUUSD": GOLD}), T0)
    return c


def test_a_block_saved_at_critical_lifts_at_the_first_normal_report_after_a_restart() -> None:
    c = core()
    records: list[Record] = []
    for i, equity in enumerate([10_000.0, 8_400.0]):  # 16 %: critical, opens blocked
        records += c.on_account(10_000, equity, "USD", T0 + i * SAVE_EVERY).records
    assert c.guard.opens_blocked
    assert any(isinstance(r, GuardSaved) and r.opens_blocked for r in records)

    again = restarted(records)
    assert again.guard.opens_blocked and again.guard.level is GuardLevel.CRITICAL
    fx = again.on_account(10_000, 9_900, "USD", T0 + 3 * SAVE_EVERY)  # 1 %: normal
    assert again.guard.level is GuardLevel.NORMAL and not again.guard.opens_blocked
    # The recovery is journaled, so a second restart does not bring the block back.
    [saved] = [r for r in fx.records if isinstance(r, GuardSaved)]
    assert saved.level == GuardLevel.NORMAL and not saved.opens_blocked
    approved(again, now=T0 + 3 * SAVE_EVERY + 1)  # an approval opens (no GuardBlocked)


def test_a_restored_block_with_a_stale_level_still_follows_the_live_level() -> None:
    """A GuardSaved whose level and block disagree (as written before the level was restored)
    is settled by the live level, not kept."""
    records: list[Record] = [
        GuardSaved(user_id="u1", peak=10_000.0, level=0, opens_blocked=True, time_ms=T0)
    ]
    again = restarted(records)
    again.on_account(10_000, 9_900, "USD", T0 + 1)
    assert not again.guard.opens_blocked
    approved(again, now=T0 + 2)


equities = st.lists(st.floats(7_000, 12_000, allow_nan=False), min_size=1, max_size=30)


@given(
    equities,
    st.integers(0, 30),
    st.sampled_from(["alert", "block_opens", "close_all"]),
)
def test_a_restart_anywhere_changes_nothing_the_guard_decides(
    equity: list[float], cut: int, on_critical: str
) -> None:
    """The same account reports, with or without a restart after report ``cut``: the same
    level, block and peak after every later report."""
    limits = DrawdownLimits(on_critical=on_critical)
    cut = min(cut, len(equity))
    steady = UserCore("u1", UserSettings(drawdown=limits))
    before = UserCore("u1", UserSettings(drawdown=limits))
    records: list[Record] = []
    for i, e in enumerate(equity[:cut]):
        steady.on_account(12_000, e, "USD", T0 + i * SAVE_EVERY)
        records += before.on_account(12_000, e, "USD", T0 + i * SAVE_EVERY).records
    after = restarted(records, drawdown=limits)
    for i, e in enumerate(equity[cut:], start=cut):
        steady.on_account(12_000, e, "USD", T0 + i * SAVE_EVERY)
        after.on_account(12_000, e, "USD", T0 + i * SAVE_EVERY)
        assert (after.guard.level, after.guard.opens_blocked, after.guard.peak) == (
            steady.guard.level,
            steady.guard.opens_blocked,
            steady.guard.peak,
        )
