"""The last line of defence of every HTTP request (pure ASGI, no Starlette request objects).

- A body must arrive within ``body_timeout_s`` of the request: a client that stalls halfway gets
  408 and the connection is closed, instead of holding a connection and a task forever.
- An unexpected exception becomes a JSON 500 here, and is *not* re-raised: re-raising (what
  Starlette's own error middleware does) makes uvicorn drop the connection, and with it the
  client's next, valid request on that kept-alive connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

log = logging.getLogger("mmagent.serving")


class BodyTimeout(Exception):
    """The client did not send its whole body in time."""


class Guard:
    def __init__(self, app: Any, body_timeout_s: float) -> None:
        self.app, self.body_timeout_s = app, body_timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        body_done = False
        started = False

        async def timed_receive() -> dict:
            nonlocal body_done
            if body_done:  # later reads wait for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTimeout(f"the request body did not arrive within {self.body_timeout_s:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        from starlette.requests import ClientDisconnect

        try:
            await self.app(scope, timed_receive, tracked_send)
        except ClientDisconnect:  # nobody to answer
            return
        except BodyTimeout as e:
            log.info("%s %s -> 408: %s", scope.get("method"), scope.get("path"), e)
            if not started:
                await _send_json(send, 408, {"error": str(e), "field": "body"}, close=True)
        except Exception:  # noqa: BLE001 - answered here so that the connection survives
            log.exception("internal error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await _send_json(send, 500, {"error": "internal server error", "field": None}, close=not body_done)


async def _send_json(send: Any, status: int, body: dict, close: bool) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:  # the rest of the body is unread: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
