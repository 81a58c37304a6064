"""Local HTTP servers standing in for a user's webhook and for the Telegram Bot API.

A :class:`Receiver` is a tiny ASGI app served by the real Hypercorn on a free loopback port. It
records every request and answers by its ``mode``: ``ok`` (200), ``fail`` (``status``), or
``hang`` (never answers: the request is held until the test ends).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tests.e2e.conftest import free_port


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, mode: str = "ok", status: int = 200) -> None:
        self.mode = mode
        self.status = status
        self.requests: list[Received] = []
        self.held = 0
        """Requests that arrived in ``hang`` mode and are still waiting for an answer."""
        self.url = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Received(scope["method"], scope["path"], headers, body))
        if self.mode == "hang":
            self.held += 1
            await trio.sleep_forever()
        status = 200 if self.mode == "ok" else self.status
        answer = json.dumps({"ok": status == 200, "result": {"message_id": len(self.requests)}})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": answer.encode()})

    async def start(self, nursery: trio.Nursery) -> Receiver:
        """Serve on 127.0.0.1 (until the nursery is cancelled); sets :attr:`url`."""
        port = free_port()
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.errorlog = None
        config.graceful_timeout = 0.1
        await nursery.start(serve, self, config)  # type: ignore[arg-type]
        self.url = f"http://127.0.0.1:{port}"
        return self
