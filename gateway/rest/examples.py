"""The example of each body ``/openapi.json`` documents: what Swagger's "Try it out" starts from
and what a client generator shows.

Examples are JSON-ready values, not Struct instances, so a field added to a model later makes
``tests/gateway/test_openapi_examples.py`` fail with the model's name (each example must decode
as its model, constraints included) instead of breaking the import. Models whose fields all have
defaults take their example from the defaults, so they follow the model.

The error bodies, one per status, are :data:`gateway.rest.docs.ERROR_EXAMPLES`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.sizing import UserSettings
from engine.stoprules import LevelChanges
from gateway.notifications import NotificationsIn, NotificationsOut
from gateway.rest.analytics import AnalyticsOut
from gateway.rest.approvals import ApprovalList, DecisionIn, DecisionOut
from gateway.rest.auth import Login, Token, UserOut
from gateway.rest.devices import DeviceList, DeviceOut, NewDevice, Registered, Rotated
from gateway.rest.market import CandleList, PriceList
from gateway.rest.ops import AlertList, AuditList, Guards, Reconciliation
from gateway.rest.positions import CloseOut, PositionList
from gateway.rest.signals import SignalList, SignalOut
from gateway.rest.users import NewUser, UserStatus
from protocol.client import PositionView
from protocol.signals import Signal

__all__ = ["EXAMPLES"]

_T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, ms
_USER = "u-3f9c2a7b1d04"
_DEVICE = "d-8e51c0a94f27"
_POSITION = "P5c1e0b7a9d3f2468"
_SIGNAL = "strat-1/sig-20260101-001/1"

_USER_OUT = {"id": _USER, "username": "trader1", "role": "user"}
_SIGNAL_OUT = {
    "key": _SIGNAL,
    "strategy_id": "strat-1",
    "signal_id": "sig-20260101-001",
    "version": 1,
    "symbol": "XAUUSD",
    "side": "buy",
    "order_type": "market",
    "entry": 2650.40,
    "sl": 2641.90,
    "tp": 2668.00,
    "volume": 0.10,
    "risk_percent": None,
    "created_at_ms": _T0,
    "expires_at_ms": _T0 + 600_000,
    "comment": "breakout",
    "decision": None,
    "position_id": None,
    "decided_version": None,
    "received_ms": _T0 + 35,
}
_APPROVAL = {
    "id": "6f0d3c52-8a1e-4b7f-9c2d-0e5a4b3c2d1e",
    "decision": "approve",
    "decided_ms": _T0 + 4_200,
    "position_id": _POSITION,
    "signal": _SIGNAL,
    "expires_at_ms": _T0 + 600_000,
}
_POSITION_VIEW = {
    "id": _POSITION,
    "symbol": "XAUUSD",
    "side": "buy",
    "volume": 0.10,
    "state": "open",
    "origin": "signal",
    "device_id": _DEVICE,
    "ticket": 48213377,
    "open_price": 2650.55,
    "open_time_ms": _T0 + 4_450,
    "sl": 2641.90,
    "tp": 2668.00,
    "current_price": 2653.10,
    "pl": 25.50,
    "close_price": None,
    "close_time_ms": None,
    "close_reason": None,
    "signal_id": _SIGNAL,
    "flags": [],
    "updated_ms": _T0 + 61_000,
    "trailing": {"distance": 5.0, "step": 0.5, "activation": 0.0},
    "break_even": None,
    "commission": -0.35,
    "swap": -1.12,
    "net_pl": 24.03,
    "fill_pending": False,
    "adopted": True,
}
_EXTERNAL_VIEW = {
    **_POSITION_VIEW,
    "id": "X5be1c0de77a4f3e2",
    "origin": "external",
    "ticket": 48213390,
    "volume": 0.05,
    "sl": 2630.00,
    "tp": None,
    "pl": 12.75,
    "signal_id": None,
    "trailing": None,
    "commission": -0.18,
    "swap": 0.0,
    "net_pl": 12.57,
    "adopted": False,
}
_DEVICE_OUT = {
    "id": _DEVICE,
    "user_id": _USER,
    "name": "MT5 ICMarkets live",
    "account_login": "51234567",
    "broker": "ICMarkets",
    "created_at": "2026-01-01T00:00:00+00:00",
    "revoked": False,
    "connected": True,
    "stale": False,
    "healthy": True,
    "last_seen_ms": _T0 + 60_000,
}

EXAMPLES: dict[type[Any], Any] = {
    Login: {"username": "trader1", "password": "correct horse battery"},
    Token: {
        "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1LTNmOWMifQ.c2lnbmF0dXJl",
        "token_type": "bearer",
        "expires_at": 1_767_229_200,
        "user": _USER_OUT,
    },
    UserOut: _USER_OUT,
    UserStatus: {**_USER_OUT, "disabled": True},
    NewUser: {"username": "trader2", "password": "a long passphrase", "role": "user"},
    UserSettings: msgspec.to_builtins(UserSettings()),
    Signal: {
        "strategy_id": "strat-1",
        "signal_id": "sig-20260101-001",
        "audience": [_USER],
        "version": 1,
        "symbol": "XAUUSD",
        "side": "buy",
        "order_type": "market",
        "entry": 2650.40,
        "sl": 2641.90,
        "tp": 2668.00,
        "volume": 0.10,
        "created_at_ms": _T0,
        "expires_at_ms": _T0 + 600_000,
        "comment": "breakout",
    },
    SignalOut: _SIGNAL_OUT,
    SignalList: {"signals": [_SIGNAL_OUT]},
    DecisionIn: {"decision": "approve"},
    DecisionOut: {"approval": _APPROVAL},
    ApprovalList: {
        "approvals": [
            {
                **{k: v for k, v in _APPROVAL.items() if k != "signal"},
                "user_id": _USER,
                "signal": _SIGNAL,
                "strategy_id": "strat-1",
                "signal_id": "sig-20260101-001",
                "signal_version": 1,
                "ip": "127.0.0.1",
                "user_agent": "Mozilla/5.0",
            }
        ]
    },
    PositionView: _POSITION_VIEW,
    LevelChanges: {
        "sl": 2645.00,
        "trailing": {"distance": 5.0, "step": 0.5, "activation": 0.0},
        "break_even": None,
    },
    NotificationsIn: {
        "events": ["fill", "close", "alert", "device_offline"],
        "webhook_url": "https://hooks.example.com/tripwire",
        "rotate_webhook_secret": False,
        "telegram_chat_id": "123456789",
        "telegram_bot_token": "123456789:AAF-example-bot-token-0123456789abcdef",
    },
    NotificationsOut: {
        "events": ["fill", "close", "alert", "device_offline"],
        "webhook_url": "https://hooks.example.com/tripwire",
        "webhook_secret_set": True,
        "telegram_chat_id": "123456789",
        "telegram_bot_token_set": True,
        "webhook_secret": "whsec-3q9VZr0x6M2b1S0l0u8cQyJzq1nQpW4tV7d9",
    },
    PositionList: {"positions": [_POSITION_VIEW, _EXTERNAL_VIEW], "next_cursor": None},
    CloseOut: {"position_id": _POSITION, "command_id": f"{_POSITION}-close-1"},
    NewDevice: {"name": "MT5 ICMarkets live", "account_login": "51234567", "broker": "ICMarkets"},
    Registered: {"device": _DEVICE_OUT, "secret": "kq3VZr0x6M2b1S0l0u8cQyJzq1nQpW4tV7d9Hc2fE5A"},
    DeviceOut: _DEVICE_OUT,
    DeviceList: {"devices": [_DEVICE_OUT]},
    Rotated: {
        "device_id": _DEVICE,
        "secret": "Zt5Q0a1pN8wR4y6Uc3Vh9Lk2Jm7Xb0Ds1Fg4He8Ti3W",
        "previous_valid_s": 300.0,
    },
    Reconciliation: {
        "devices": [
            {
                "device_id": _DEVICE,
                "connected": True,
                "stale": False,
                "healthy": True,
                "last_seen_ms": _T0 + 60_000,
                "outstanding_commands": 0,
            }
        ],
        "entries": [
            {
                "id": 18,
                "device_id": _DEVICE,
                "position_id": "X5be1c0de77a4f3e2",
                "kind": "adopt",
                "detail": "adopted by its user: its SL/TP are watched",
                "ticket": 48213390,
                "time_ms": _T0 + 9_000,
            },
            {
                "id": 17,
                "device_id": _DEVICE,
                "position_id": "X5be1c0de77a4f3e2",
                "kind": "external_found",
                "detail": "ticket 48213390 XAUUSD buy",
                "ticket": 48213390,
                "time_ms": _T0 + 2_000,
            },
        ],
    },
    Guards: {
        "drawdown": {
            "level": "normal",
            "drawdown": 0.012,
            "peak": 10_000.0,
            "opens_blocked": False,
            "limits": msgspec.to_builtins(UserSettings().drawdown),
            "equity": 9_880.0,
            "balance": 9_993.13,
        },
        "market": [
            {
                "symbol": "XAUUSD",
                "median_spread": 0.25,
                "alerting": [],
                "last_quote_ms": _T0 + 60_000,
            }
        ],
    },
    AlertList: {
        "alerts": [
            {
                "id": 42,
                "time_ms": _T0 + 30_000,
                "kind": "drawdown",
                "level": "warning",
                "user_id": _USER,
                "device_id": None,
                "symbol": None,
                "position_id": None,
                "message": "drawdown 10.4 % passed the warning level",
                "value": 0.104,
                "threshold": 0.10,
            }
        ]
    },
    AuditList: {
        "entries": [
            {
                "id": 1201,
                "time_ms": _T0 + 4_200,
                "actor_id": _USER,
                "action": "signal.approve",
                "target_type": "signal",
                "target_id": _SIGNAL,
                "ip": "127.0.0.1",
                "user_agent": "Mozilla/5.0",
                "outcome": "201",
                "detail": {"position_id": _POSITION},
            }
        ]
    },
    PriceList: {
        "prices": [{"symbol": "XAUUSD", "bid": 2653.10, "ask": 2653.35, "time_ms": _T0 + 60_000}]
    },
    CandleList: {
        "symbol": "XAUUSD",
        "interval_s": 60,
        "candles": [
            {"t": _T0, "o": 2650.10, "h": 2651.20, "l": 2649.80, "c": 2650.90},
            {"t": _T0 + 60_000, "o": 2650.90, "h": 2653.40, "l": 2650.70, "c": 2653.10},
        ],
    },
    AnalyticsOut: {
        "pl": {"realized": -6.87, "floating": 25.50},
        "sharpe": None,
        "sharpe_reason": "fewer than 30 closed trades",
        "sharpe_min_returns": 30,
        "max_drawdown": 0.0007,
        "max_drawdown_reason": None,
        "equity_curve": [
            {"time_ms": _T0, "equity": 10_000.0},
            {"time_ms": _T0 + 3_600_000, "equity": 9_993.13},
        ],
        "rsi": {
            "symbol": "XAUUSD",
            "rolling": 61.2,
            "wilder": 58.7,
            "period": 14,
            "interval_s": 60,
        },
        "starting_balance": 10_000.0,
        "balance": 9_993.13,
        "balance_reported": True,
        "trades": 1,
    },
}
"""Model -> the JSON value of its example."""
