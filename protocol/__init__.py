"""The wire contract of Tripwire: every message on every wire, its codecs and its signatures.

This package has no networking code at all, and no clock: time comes in as ``now_ms``
arguments, bytes come in and go out as values. It imports nothing of ours, so every other
package may import it. What is in it:

=====================  ==========================================================================
``errors``             the one exception hierarchy of the whole project, with stable codes
``types``, ``common``  bounded field types; sides, origins, alerts shared with the engine
``device``             device <-> server messages (``/ws/device``)
``client``             client <-> server messages (``/ws/client``)
``feed``, ``signals``  quote batches (``/ws/feed``, tick bus); strategy signals (REST)
``ids``                command ids and order-comment client ids
``codec``              JSON/msgpack codecs per connection, subprotocols, version negotiation
``signing``            signed hellos and signal headers (HMAC-SHA256, constant time)
``notifications``      the webhook body users receive, signed like a signal
``session``            the session key (HKDF) and command signatures
``nonces``             the nonce cache that rejects replayed hellos
``crypto``             optional AES-GCM frames
``results``            broker result codes -> done / retryable / final / already_closed / unknown
``closecodes``         WebSocket close codes and which error gets which
``redaction``          what may be logged, what each peer may see
=====================  ==========================================================================

docs/protocol.md is the same contract written for EA authors.
"""

from __future__ import annotations

from protocol import errors
from protocol.client import ClientMessage, ServerClientMessage
from protocol.closecodes import CloseCode, close_code_for, close_reason
from protocol.codec import (
    PROTOCOL_VERSION,
    SUBPROTOCOL_JSON,
    SUBPROTOCOL_MSGPACK,
    SUPPORTED_VERSIONS,
    Encoding,
    WireCodec,
    client_client_codec,
    client_server_codec,
    decode_hello_body,
    decode_signal,
    device_client_codec,
    device_server_codec,
    encode_hello_body,
    encode_signal,
    encoding_of,
    feed_codec,
    negotiate,
    negotiate_version,
    sniff_encoding,
)
from protocol.common import Alert, AlertLevel, Origin, Side
from protocol.crypto import FrameCipher
from protocol.device import Command, DeviceMessage, Hello, HelloBody, ServerMessage
from protocol.errors import *  # noqa: F403  (the error tree is part of the public surface)
from protocol.feed import Quote, QuoteBatch
from protocol.ids import client_id, command_id, parse_command_id, position_id_from_comment
from protocol.nonces import (
    AsyncNonceCache,
    MemoryNonceCache,
    NonceCache,
    check_nonce,
    nonce_key,
    replay_ttl_ms,
)
from protocol.redaction import client_error, device_error, for_log, peer_error
from protocol.results import ResultCategory, classify
from protocol.session import derive_session_key, sign_command, verify_command
from protocol.signals import Signal, check_signal_time
from protocol.signing import (
    VerifiedHello,
    sign_hello,
    sign_signal_header,
    verify_hello,
    verify_signal_header,
)

__all__ = [
    "PROTOCOL_VERSION",
    "SUBPROTOCOL_JSON",
    "SUBPROTOCOL_MSGPACK",
    "SUPPORTED_VERSIONS",
    "Alert",
    "AlertLevel",
    "AsyncNonceCache",
    "ClientMessage",
    "CloseCode",
    "Command",
    "DeviceMessage",
    "Encoding",
    "FrameCipher",
    "Hello",
    "HelloBody",
    "MemoryNonceCache",
    "NonceCache",
    "Origin",
    "Quote",
    "QuoteBatch",
    "ResultCategory",
    "ServerClientMessage",
    "ServerMessage",
    "Side",
    "Signal",
    "VerifiedHello",
    "WireCodec",
    "check_nonce",
    "check_signal_time",
    "classify",
    "client_client_codec",
    "client_error",
    "client_id",
    "client_server_codec",
    "close_code_for",
    "close_reason",
    "command_id",
    "decode_hello_body",
    "decode_signal",
    "derive_session_key",
    "device_client_codec",
    "device_error",
    "device_server_codec",
    "encode_hello_body",
    "encode_signal",
    "encoding_of",
    "feed_codec",
    "for_log",
    "negotiate",
    "negotiate_version",
    "nonce_key",
    "parse_command_id",
    "peer_error",
    "position_id_from_comment",
    "replay_ttl_ms",
    "sign_command",
    "sign_hello",
    "sign_signal_header",
    "sniff_encoding",
    "verify_command",
    "verify_hello",
    "verify_signal_header",
]
__all__ += errors.__all__
