"""tripwire-ea: the bridge between a MetaTrader 5 terminal and a Tripwire server.

It runs beside the terminal (on Windows, with the official ``MetaTrader5`` package), speaks the
device protocol of docs/protocol.md over a WebSocket and trades through ``order_send``. See
docs/bridge.md for installing and running it.
"""
