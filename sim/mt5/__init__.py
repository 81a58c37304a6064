"""A fake MetaTrader 5 terminal for tests on Linux, and a ``MetaTrader5`` package that talks to it.

Like the real package, ``sim/mt5/client/MetaTrader5`` is a thin client: the terminal
(positions,
orders, deals, the account, the broker's market) lives in another process
(``python -m sim.mt5.terminal``), reached over a Unix socket with
:mod:`multiprocessing.connection`. A client killed with SIGKILL leaves the terminal's positions
and history as they were, exactly as a crashed EA leaves a real terminal's.

Put ``sim/mt5/client`` (it holds nothing else) on ``PYTHONPATH`` and ``import MetaTrader5`` is
the fake; ``initialize(path)`` takes the terminal's socket path where the real one takes
``terminal64.exe``'s. Tests steer the terminal (the market's replay, scripted retcodes, a lost
IPC channel, killing the client right after an ``order_send``) through
:class:`sim.mt5.control.TerminalControl`.
"""
