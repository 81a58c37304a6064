"""Simulated counterparts of the outside world: a paper MetaTrader terminal, a simulated EA
over a real WebSocket, price feeds that replay the bundled days or invent a market, the loader of
those days, and a fake ``MetaTrader5`` terminal for the bridge (``sim/mt5/``).

The runtime's demo (the paper device, the replay feed), the harnesses and the tests use them;
the engine, the actors and persistence never import them (``tests/test_layering.py``).
"""
