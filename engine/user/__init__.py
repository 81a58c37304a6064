"""A user's trading core (:class:`UserCore`) and what it is made of.

* ``core``: :class:`UserCore`, one user's state and decisions (approvals, closes, lost links,
  the drawdown guard), composed of the parts below;
* ``opening``: the position and the open command an approved signal makes (pure);
* ``book``: the position book: live positions, the latest closes, P&L not yet reported;
* ``commands``: the command tracker: commands in flight, retries and their backoff, modifies;
* ``outcomes``: what a device's answer to a command does to its position (retries, alerts);
* ``schedule``: expiries, and retries and modifies issued in time; trailing moves;
* ``terminal``: reconciliation with what a terminal reports (snapshots, its own events, deals);
* ``timing``: deadlines, backoffs and rates.
"""

from __future__ import annotations

from engine.user.commands import Category, InFlight
from engine.user.core import DeviceInfo, UserCore
from engine.user.timing import Timing

__all__ = ["Category", "DeviceInfo", "InFlight", "Timing", "UserCore"]
