"""The direct WebSocket (``gateway.wsdirect``) against a real wsproto client over an in-memory
stream pair: messages whole and in order, the size limit, pings, the closing handshake."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from gateway.wsdirect import DirectWebSocket, data_frame, parse_upgrade, serve_upgraded
from protocol.closecodes import CloseCode
from protocol.errors import FrameTooLarge


class Client:
    """The EA's side: a wsproto client on the other end of the stream."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.events: list[Any] = []

    async def send(self, event: Any) -> None:
        await self.stream.send_all(self.conn.send(event))

    async def next_event(self) -> Any:
        with trio.fail_after(5):
            while not self.events:
                data = await self.stream.receive_some(65536)
                self.conn.receive_data(data or None)
                self.events.extend(self.conn.events())
                if not data and not self.events:
                    return None
        return self.events.pop(0)


async def _pair(max_message: int = 1024) -> tuple[DirectWebSocket, Client]:
    server_stream, client_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    head = client.conn.send(
        Request(host="127.0.0.1", target="/ws/device?x=1", subprotocols=["tripwire.v1.json"])
    )
    upgrade = parse_upgrade(head)
    assert upgrade is not None
    conn, request = upgrade
    ws = DirectWebSocket(server_stream, conn, request, "127.0.0.1", max_message=max_message)
    assert ws.requested_subprotocols == ["tripwire.v1.json"]
    assert ws.path == "/ws/device" and ws.args == {"x": "1"}
    await ws.accept(subprotocol="tripwire.v1.json")
    accepted = await client.next_event()
    assert isinstance(accepted, AcceptConnection) and accepted.subprotocol == "tripwire.v1.json"
    return ws, client


def test_a_plain_http_request_is_not_an_upgrade() -> None:
    assert parse_upgrade(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") is None
    assert parse_upgrade(b"POST /api HTTP/1.1\r\nHost: x\r\n\r\n") is None


async def test_fragments_make_one_message_and_a_batch_leaves_as_separate_frames() -> None:
    ws, client = await _pair()
    await client.send(BytesMessage(data=b"ab", message_finished=False))
    await client.send(BytesMessage(data=b"cd", message_finished=True))
    await client.send(TextMessage(data="text"))
    assert await ws.receive() == b"abcd"
    assert await ws.receive() == "text"
    await ws.send_many([b"one", "two", b"three"])
    got = [await client.next_event() for _ in range(3)]
    assert [e.data for e in got] == [b"one", "two", b"three"]
    assert all(isinstance(e, Message) and e.message_finished for e in got)


async def test_an_oversized_message_is_refused_to_the_handler_before_it_is_whole() -> None:
    """Over the limit, ``receive`` raises ``FrameTooLarge`` with it (and keeps raising it), so
    the handler can send its error frame before its close; the messages before it come first."""
    ws, client = await _pair(max_message=100)
    await client.send(BytesMessage(data=b"whole"))
    await client.send(BytesMessage(data=b"x" * 80, message_finished=False))
    await client.send(BytesMessage(data=b"x" * 80, message_finished=False))
    assert await ws.receive() == b"whole"
    for _ in range(2):
        with pytest.raises(FrameTooLarge) as refused:
            await ws.receive()
        assert refused.value.details == {"size": 160, "limit": 100}
    await ws.send('{"type":"error","code":"too_large"}')
    await ws.close(CloseCode.MESSAGE_TOO_BIG, "too_large: over 100 bytes")
    told = await client.next_event()
    assert isinstance(told, Message) and told.data == '{"type":"error","code":"too_large"}'
    closed = await client.next_event()
    assert isinstance(closed, CloseConnection) and closed.code == CloseCode.MESSAGE_TOO_BIG
    with pytest.raises(trio.ClosedResourceError):
        await ws.send(b"after the close")


async def test_a_ping_is_answered_and_a_peer_close_is_answered_and_ends_receive() -> None:
    ws, client = await _pair()
    await client.send(Ping(payload=b"p"))
    await client.send(CloseConnection(code=1000, reason="bye"))
    with pytest.raises(trio.BrokenResourceError):
        await ws.receive()
    pong = await client.next_event()
    assert isinstance(pong, Pong) and pong.payload == b"p"
    answer = await client.next_event()
    assert isinstance(answer, CloseConnection) and answer.code == 1000


async def test_a_failing_handler_closes_with_1011_and_the_stream_is_closed() -> None:
    ws, client = await _pair()

    async def handler(_ws: DirectWebSocket) -> None:
        raise ValueError("a bug")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve_upgraded, ws, handler, ping_interval_s=0))
        closed = await client.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == CloseCode.INTERNAL_ERROR
        await client.send(closed.response())
    end = await client.next_event()  # the server closed its end (wsproto: 1006 at EOF)
    assert end is None or (isinstance(end, CloseConnection) and end.code == 1006)


@pytest.mark.parametrize("failure", ["peer gone", "bug"])
async def test_a_handlers_nursery_reporting_the_peer_gone_is_no_failure(failure: str) -> None:
    ws, client = await _pair()

    async def handler(_ws: DirectWebSocket) -> None:
        errors: list[Exception] = [trio.BrokenResourceError("the peer closed the websocket")]
        if failure == "bug":
            errors.append(ValueError("a bug"))
        raise ExceptionGroup("from a nursery", errors)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve_upgraded, ws, handler, ping_interval_s=0))
        closed = await client.next_event()
        expected = CloseCode.INTERNAL_ERROR if failure == "bug" else CloseCode.NORMAL
        assert isinstance(closed, CloseConnection) and closed.code == expected
        await client.send(closed.response())


async def _tcp_pair(nursery: trio.Nursery) -> tuple[DirectWebSocket, Client]:
    """The same over a real loopback socket (the only kind that can send without waiting)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = Client(await trio.open_tcp_stream("127.0.0.1", port))
    server_stream = await listeners[0].accept()
    await listeners[0].aclose()
    await client.send(Request(host="127.0.0.1", target="/ws/device"))
    upgrade = parse_upgrade(await server_stream.receive_some(65536))
    assert upgrade is not None
    ws = DirectWebSocket(server_stream, *upgrade, "127.0.0.1", max_message=1 << 20)
    await ws.accept()
    assert isinstance(await client.next_event(), AcceptConnection)
    return ws, client


async def test_a_send_without_waiting_keeps_order_even_when_the_kernel_is_full(
    nursery: trio.Nursery,
) -> None:
    ws, client = await _tcp_pair(nursery)
    memory_ws, _ = await _pair()
    assert not memory_ws.can_send_nowait()  # no socket of its own (as TLS): the writer sends
    assert ws.can_send_nowait()
    assert ws.send_many_nowait([b"first", "second"]) is True
    assert [(await client.next_event()).data for _ in range(2)] == [b"first", "second"]
    # The client stops reading: sends fill the kernel's buffers until one is left behind.
    chunk = b"x" * 60_000
    sent = 0
    for _ in range(10_000):
        if not ws.can_send_nowait():
            break
        sent += 1
        if not ws.send_many_nowait([chunk]):
            break
    assert not ws.can_send_nowait()  # the backlog waits: nobody may jump ahead of it
    received: list[bytes] = []

    async def read_all() -> None:
        parts = b""
        while len(received) < sent + 1:
            event = await client.next_event()
            parts += event.data
            if event.message_finished:
                received.append(parts)
                parts = b""

    nursery.start_soon(read_all)
    await ws.flush()
    await ws.send(b"after")  # an ordinary write after the backlog
    with trio.fail_after(10):
        while len(received) < sent + 1:
            await trio.sleep(0.01)
    assert received == [chunk] * sent + [b"after"]
    assert ws.can_send_nowait()


async def _received_in_chunks(fast: bool, wire: bytes, chunk: int, count: int) -> list[Any]:
    """What ``count`` receives return when ``wire`` arrives ``chunk`` bytes at a time."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    head = client.conn.send(Request(host="127.0.0.1", target="/ws/feed"))
    upgrade = parse_upgrade(head)
    assert upgrade is not None
    ws = DirectWebSocket(
        server_stream, *upgrade, "127.0.0.1", max_message=1 << 20, fast_frames=fast
    )
    await ws.accept()
    assert isinstance(await client.next_event(), AcceptConnection)
    for at in range(0, len(wire), chunk):
        await client_stream.send_all(wire[at : at + chunk])
    with trio.fail_after(5):
        return [await ws.receive() for _ in range(count)]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
async def test_frames_parsed_here_are_the_messages_wsproto_makes_split_anywhere(
    chunk: int,
) -> None:
    # Every payload length class (7-bit, 16-bit, 64-bit), text and binary, a fragmented
    # message and a ping between them: the fast path and wsproto alone agree at any split.
    from wsproto.connection import Connection  # frames as a client sends them, once open

    frames = Connection(ConnectionType.CLIENT)
    events = [
        TextMessage(data="quote é"),
        BytesMessage(data=b""),
        BytesMessage(data=bytes(range(256)) * 2),
        TextMessage(data="x" * 70_000),
        Ping(payload=b"hi"),
        TextMessage(data="first ", message_finished=False),
        TextMessage(data="second", message_finished=True),
        BytesMessage(data=b"\x00\x01\x02"),
    ]
    wire = b"".join(frames.send(e) for e in events)
    expected = [
        "quote é",
        b"",
        bytes(range(256)) * 2,
        "x" * 70_000,
        "first second",
        b"\x00\x01\x02",
    ]
    assert await _received_in_chunks(False, wire, chunk, len(expected)) == expected
    assert await _received_in_chunks(True, wire, chunk, len(expected)) == expected


async def _refused(fast: bool, wire: bytes) -> tuple[Any, ...]:
    """What ``receive`` raises for ``wire``, the connection's state then, and what the peer
    got meanwhile."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    upgrade = parse_upgrade(client.conn.send(Request(host="h", target="/ws/feed")))
    assert upgrade is not None
    ws = DirectWebSocket(server_stream, *upgrade, "127.0.0.1", max_message=1024, fast_frames=fast)
    await ws.accept()
    assert isinstance(await client.next_event(), AcceptConnection)
    await client_stream.send_all(wire)
    raised: type[BaseException] | None = None
    try:
        with trio.fail_after(5):
            await ws.receive()
    except (trio.BrokenResourceError, FrameTooLarge) as exc:
        # FrameTooLarge: the handler sends its error frame with the limit, then closes 1009.
        raised = type(exc)
    sent = []
    with trio.move_on_after(0.2):  # a close frame, if the failure sent one
        sent.append(await client.next_event())
    closes = [(e.code, e.reason) for e in sent if isinstance(e, CloseConnection)]
    return raised, ws.closed, ws.conn.state, closes


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"\x81\x82" + b"\x00\x00\x00\x00" + b"\xff\xfe", trio.BrokenResourceError),  # not UTF-8
        (b"\x82\x02ab", trio.BrokenResourceError),  # a client frame without a mask
        (b"\xc2\x82" + b"\x00\x00\x00\x00" + b"ab", trio.BrokenResourceError),  # a reserved bit
        (b"\x82\xfe\x08\x00" + b"\x00" * 4 + b"x" * 2048, FrameTooLarge),  # over max_message
    ],
)
async def test_a_frame_the_fast_path_does_not_take_fails_as_wsproto_fails_it(
    wire: bytes, error: type[BaseException]
) -> None:
    refused = await _refused(False, wire)
    assert refused[0] is error
    assert await _refused(True, wire) == refused


@settings(max_examples=300, deadline=None)
@given(
    message=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        # Each edge of the length classes (7-bit, 16-bit, 64-bit), text and binary.
        st.sampled_from([125, 126, 127, 65_535, 65_536, 70_000]).flatmap(
            lambda n: st.sampled_from([b"b" * n, "t" * n])
        ),
    )
)
def test_a_frame_made_here_is_the_frame_wsproto_makes(message: str | bytes) -> None:
    server = WSConnection(ConnectionType.SERVER)
    client = WSConnection(ConnectionType.CLIENT)
    server.receive_data(client.send(Request(host="127.0.0.1", target="/")))
    list(server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
    assert data_frame(message) == server.send(event)
    client.receive_data(data_frame(message))
    (received,) = client.events()
    assert received.data == message and received.message_finished
