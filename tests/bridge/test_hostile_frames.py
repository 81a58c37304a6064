"""Whatever a server (or someone in the middle) sends, the bridge neither crashes nor executes
a command that this session's key did not sign."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import device_client_codec
from protocol.common import Side
from protocol.device import Ack, CloseCommand, Command, ModifyCommand, OpenCommand
from protocol.session import sign_command
from tripwire_ea import retcodes as rc
from tripwire_ea.dispatch import Dispatcher
from tripwire_ea.window import CommandWindow

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
JSON = device_client_codec("json")
MSGPACK = device_client_codec("msgpack")


class RecordingTerminal:
    """Stands in for the terminal: records what would have reached ``order_send``."""

    def __init__(self) -> None:
        self.executed: list[Command] = []

    def execute(self, command: Command) -> Ack:
        self.executed.append(command)
        return Ack(command_id=command.command_id, retcode=rc.TRADE_RETCODE_DONE, executed=True,
                   ticket=1, fill_price=1.0, fill_volume=0.1, fill_time_ms=1)  # fmt: skip

    def positions(self) -> list[Any]:
        return []


def _dispatcher(folder: Path) -> tuple[Dispatcher, RecordingTerminal]:
    """A bridge with an empty window (a folder of its own: hypothesis reuses ``tmp_path``)."""
    terminal = RecordingTerminal()
    window = CommandWindow(Path(tempfile.mkdtemp(dir=folder)) / "w.json")
    d = Dispatcher(terminal, window, JSON)  # type: ignore[arg-type]
    d.session_key = KEY
    return d, terminal


ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,30}", fullmatch=True)
prices = st.floats(min_value=0.01, max_value=1e5, allow_nan=False)
commands = st.one_of(
    st.builds(CloseCommand, command_id=ids, ticket=st.integers(0, 2**40), symbol=st.just("XAUUSDm"),
              volume=st.floats(0.01, 10), deadline_ms=st.integers(0, 2**40),
              reason=st.sampled_from(["sl", "tp", ""])),
    st.builds(OpenCommand, command_id=ids, client_id=st.just("tw:P1"), symbol=st.just("XAUUSDm"),
              side=st.sampled_from(Side), volume=st.floats(0.01, 10), sl=st.none() | prices,
              tp=st.none() | prices, deadline_ms=st.integers(0, 2**40)),
    st.builds(ModifyCommand, command_id=ids, ticket=st.integers(0, 2**40),
              symbol=st.just("XAUUSDm"), sl=st.none() | prices, deadline_ms=st.integers(0, 2**40)),
)  # fmt: skip


def _forge(command: Command, how: int, data: st.DataObject) -> Command:
    """A command this session's key did not sign: unsigned, signed under another key, signed
    then altered, or carrying a random signature."""
    if how == 0:
        return command
    if how == 1:
        return sign_command(command, OTHER_KEY)
    signed = sign_command(command, KEY)
    if how == 2:
        field = "ticket" if not isinstance(signed, OpenCommand) else "volume"
        value = getattr(signed, field)
        return msgspec.structs.replace(signed, **{field: value + 1})
    return msgspec.structs.replace(
        signed, sig=data.draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    )


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_garbage_frames_are_dropped(tmp_path: Path, frame: bytes | str) -> None:
    d, terminal = _dispatcher(tmp_path)
    d.handle_frame(frame)
    assert terminal.executed == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(command=commands, how=st.integers(0, 3), data=st.data(),
       msgpack=st.booleans(),
       extra=st.dictionaries(st.text(max_size=8), st.integers(-(2**31), 2**31),
                             max_size=3))  # fmt: skip
def test_a_forged_command_is_refused_and_never_executed(
    tmp_path: Path, command: Command, how: int, data: st.DataObject, msgpack: bool,
    extra: dict[str, int],
) -> None:  # fmt: skip
    d, terminal = _dispatcher(tmp_path)
    forged = _forge(command, how, data)
    codec = MSGPACK if msgpack else JSON
    # The server's encoding of the frame, with unknown fields a newer server may add.
    body = msgspec.json.decode(msgspec.json.encode(forged))
    body.update({k: v for k, v in extra.items() if k not in body})
    frame = msgspec.msgpack.encode(body) if msgpack else msgspec.json.encode(body).decode()
    d.codec = codec
    replies = d.handle_frame(frame)
    assert terminal.executed == []
    if replies:
        [ack] = replies
        assert isinstance(ack, Ack)
        assert (ack.retcode, ack.executed) == (rc.EA_BAD_SIGNATURE, False)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(command=commands)
def test_a_signed_command_executes_once(tmp_path: Path, command: Command) -> None:
    d, terminal = _dispatcher(tmp_path)
    frame = msgspec.json.encode(sign_command(command, KEY)).decode()
    first = d.handle_frame(frame)
    again = d.handle_frame(frame)
    assert terminal.executed == [sign_command(command, KEY)]
    assert isinstance(first[0], Ack) and isinstance(again[0], Ack) and again[0].repeat


def test_without_a_session_nothing_executes(tmp_path: Path) -> None:
    d, terminal = _dispatcher(tmp_path)
    d.session_key = None
    close = CloseCommand(command_id="P1.close.1", ticket=1, symbol="X", volume=0.1, deadline_ms=0)
    [ack] = d.handle_frame(msgspec.json.encode(sign_command(close, KEY)).decode())
    assert isinstance(ack, Ack) and ack.retcode == rc.EA_BAD_SIGNATURE and terminal.executed == []
