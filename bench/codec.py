"""Codec harness: encode and decode cost per message kind, JSON vs msgpack.

    python -m bench.codec --json out.json
    python -m bench.codec --repeat 3 --number 200     # quick

Each message kind is a fixed, realistic workload (a hello with 20 symbols, a snapshot of 50
terminal positions, a quote batch of 10, a client snapshot of 100 positions, ...), encoded and
decoded through the same ``protocol.codec`` objects the gateway uses: decode includes the frame
limit check and error wrapping, JSON encode includes turning bytes into the ``str`` of a text
frame. Every figure is the best of ``--repeat`` runs of ``--number`` calls (timeit style: the
minimum is the least disturbed run), minus the cost of timing a trivial builtin call, measured
in the same run.

Output columns: ``encode_ns`` and ``decode_ns`` per message, ``bytes`` on the wire. The baseline
printed below the table is the codec wrapper's overhead over a bare msgspec decode.
"""

from __future__ import annotations

import functools
import timeit
from collections.abc import Callable
from typing import Any

import msgspec

from bench.common import base_parser, machine, print_table, write_json
from protocol import codec, session, signing
from protocol.client import AccountView, PositionDelta, PositionView, Snapshot
from protocol.common import Side
from protocol.device import (
    Ack,
    CloseCommand,
    Heartbeat,
    HelloBody,
    PositionsSnapshot,
    SymbolSpec,
    TerminalPosition,
)
from protocol.feed import Quote, QuoteBatch

T0 = 1_767_225_600_000
SECRET = b"bench-secret-0123456789abcdef"
ENCODINGS: tuple[codec.Encoding, ...] = ("json", "msgpack")


def _terminal_position(i: int) -> TerminalPosition:
    return TerminalPosition(
        ticket=250_000_000 + i,
        symbol="XAUUSDm",
        side=Side.BUY if i % 2 else Side.SELL,
        volume=0.01 * (1 + i % 10),
        open_price=2600.0 + i * 0.37,
        open_time_ms=T0 - i * 60_000,
        sl=2590.0 + i * 0.37,
        tp=2620.0 + i * 0.37,
        comment=f"tw:P{i:06d}",
        magic=20260101,
        profit=round(-50 + i * 1.3, 2),
    )


def _position_view(i: int) -> PositionView:
    return PositionView(
        id=f"P{i:06d}",
        symbol="XAUUSD",
        side=Side.BUY if i % 2 else Side.SELL,
        volume=0.1,
        state="open",
        device_id="ea-0001",
        ticket=250_000_000 + i,
        open_price=2600.0 + i * 0.37,
        open_time_ms=T0 - i * 60_000,
        sl=2590.0 + i * 0.37,
        tp=2620.0 + i * 0.37,
        current_price=2650.15,
        pl=round(-50 + i * 1.3, 2),
        signal_id=f"sig-{i:06d}",
        updated_ms=T0,
    )


def workloads() -> list[tuple[str, Any, str]]:
    """``(name, message, wire)``: wire ``device`` (device -> server), ``server`` (server ->
    device), ``client`` (server -> client) or ``feed``."""
    symbols = [
        SymbolSpec(name=f"SYM{i:02d}m", digits=5, contract_size=100_000.0, filling_modes=["ioc"])
        for i in range(20)
    ]
    body = HelloBody(
        ea_build="5.00.4620", account_login="5012345", terminal_time_ms=T0, symbols=symbols
    )
    hello = signing.sign_hello("ea-0001", SECRET, body, T0, "bench-nonce-0123456789")
    key = session.derive_session_key(SECRET, device_id="ea-0001", nonce=hello.nonce, ts_ms=T0)
    close = session.sign_command(
        CloseCommand(
            command_id="P000001.close.1",
            ticket=250_000_001,
            symbol="XAUUSDm",
            volume=0.1,
            deviation_points=30,
            reason="sl",
            deadline_ms=T0 + 10_000,
        ),
        key,
    )
    quotes = [
        Quote(symbol=f"SYM{i:02d}", bid=1.08 + i / 1e4, ask=1.0801 + i / 1e4, time_ms=T0 + i)
        for i in range(10)
    ]
    return [
        ("hello", hello, "device"),
        ("heartbeat", Heartbeat(seq=42, time_ms=T0), "device"),
        (
            "positions_50",
            PositionsSnapshot(time_ms=T0, positions=[_terminal_position(i) for i in range(50)]),
            "device",
        ),
        (
            "ack",
            Ack(
                command_id="P000001.close.1",
                retcode=10009,
                result_text="done",
                ticket=250_000_001,
                fill_price=2641.2,
                fill_volume=0.1,
                fill_time_ms=T0 + 80,
                executed=True,
            ),
            "device",
        ),
        ("close_command", close, "server"),
        ("quotes_10", QuoteBatch(quotes=quotes, sent_ms=T0 + 10), "feed"),
        ("position_delta", PositionDelta(position=_position_view(1)), "client"),
        (
            "snapshot_100",
            Snapshot(
                time_ms=T0,
                positions=[_position_view(i) for i in range(100)],
                account=AccountView(user_id="u-1", balance=10_000.0, equity=10_250.0),
            ),
            "client",
        ),
    ]


def _codecs(wire: str, encoding: codec.Encoding) -> tuple[Any, Any]:
    """(the sender's codec, the receiver's codec) of a wire."""
    big = 64 * codec.DEFAULT_MAX_FRAME_BYTES
    if wire == "device":
        return codec.device_client_codec(encoding), codec.device_server_codec(encoding)
    if wire == "server":
        return codec.device_server_codec(encoding), codec.device_client_codec(encoding)
    if wire == "client":
        return codec.client_server_codec(encoding), codec.client_client_codec(encoding, big)
    return codec.feed_codec(encoding), codec.feed_codec(encoding, big)


def best_ns(fn: Callable[[], object], number: int, repeat: int, empty: float) -> float:
    """Best per-call time of ``fn`` in ns, minus ``empty`` (the cost of calling nothing)."""
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return max(min(runs) / number * 1e9 - empty, 0.0)


def _calibrate(fn: Callable[[], object], target_s: float = 0.05) -> int:
    number, _ = timeit.Timer(fn).autorange()
    # autorange reaches >= 0.2 s; scale down to ~target_s per run to keep the harness quick.
    return max(1, int(number * target_s / 0.2))


def measure(number: int, repeat: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    # What timing costs by itself: the timeit loop and a call of a trivial builtin.
    empty = best_ns(functools.partial(len, b""), 100_000, 5, 0.0)
    results: list[dict[str, Any]] = []
    for name, message, wire in workloads():
        for encoding in ENCODINGS:
            sender, receiver = _codecs(wire, encoding)
            frame = sender.encode(message)
            assert receiver.decode(frame) == message
            encode = functools.partial(sender.encode, message)
            decode = functools.partial(receiver.decode, frame)
            n = number or _calibrate(decode)
            results.append(
                {
                    "message": name,
                    "codec": encoding,
                    "encode_ns": round(best_ns(encode, n, repeat, empty), 1),
                    "decode_ns": round(best_ns(decode, n, repeat, empty), 1),
                    "bytes": len(frame.encode() if isinstance(frame, str) else frame),
                }
            )
    # Baseline in the same run: what the wrapper (limit check, error mapping) costs on the
    # smallest message, against msgspec's own decoder.
    frame = codec.device_client_codec("json").encode(Heartbeat(seq=42, time_ms=T0))
    bare = functools.partial(msgspec.json.Decoder(Heartbeat).decode, frame)
    wrapped = functools.partial(codec.device_server_codec("json").decode, frame)
    n = number or _calibrate(wrapped)
    baseline = {
        "heartbeat_json_bare_msgspec_decode_ns": round(best_ns(bare, n, repeat, empty), 1),
        "heartbeat_json_codec_decode_ns": round(best_ns(wrapped, n, repeat, empty), 1),
        "timer_overhead_ns": round(empty, 1),
    }
    return results, baseline


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure (default 7)")
    parser.add_argument(
        "--number",
        type=int,
        default=0,
        help="calls per run (default: calibrated to ~50 ms per run)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.number < 0:
        parser.error("--repeat must be >= 1 and --number >= 0")
    results, baseline = measure(args.number, args.repeat)
    print_table(
        f"codec cost per message (best of {args.repeat})",
        results,
        ["message", "codec", "encode_ns", "decode_ns", "bytes"],
    )
    print(
        "\nbaseline: heartbeat JSON decode, bare msgspec"
        f" {baseline['heartbeat_json_bare_msgspec_decode_ns']:.0f} ns,"
        f" through protocol.codec {baseline['heartbeat_json_codec_decode_ns']:.0f} ns"
    )
    write_json(args.json, {"machine": machine(), "results": results, "baseline": baseline})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
