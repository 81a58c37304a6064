"""The fake terminal as a process, and the fake ``MetaTrader5`` package imported in this one."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sim.mt5.control import TerminalControl
from tests.bridge.harness import FAKE_MT5, TerminalProcess


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[TerminalProcess, TerminalControl]]:
    process = TerminalProcess(tmp_path, "--suffix", "m", "--symbols", "XAUUSD,EURUSD")
    control = process.start()
    try:
        yield process, control
    finally:
        process.stop()


@pytest.fixture
def mt5(terminal: tuple[TerminalProcess, TerminalControl]) -> Iterator[Any]:
    """``import MetaTrader5`` (the fake), initialized against the terminal process."""
    sys.path.insert(0, str(FAKE_MT5))
    try:
        module = importlib.import_module("MetaTrader5")
        assert module.initialize(terminal[0].address), module.last_error()
        yield module
        module.shutdown()
    finally:
        sys.path.remove(str(FAKE_MT5))
        sys.modules.pop("MetaTrader5", None)
