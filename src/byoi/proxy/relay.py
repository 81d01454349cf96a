"""Relay one accepted WebSocket to its upstream WebSocket, frame by frame, both ways at once.

Text stays text and binary stays binary. Whichever side closes first, its close code (and reason) is given
to the other. There is no idle timeout and no ping of our own: RStudio's terminal sends a keep-alive every
10 s, but a Shiny app's socket may sit idle for hours and must stay open (§5 of rstudio-behind-a-proxy.md).
Backpressure is each side's own: aiohttp's `send_*` and the ASGI server's `send` wait when their socket's
buffer is full, so a fast sender is slowed to the pace of the slow receiver rather than queued in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from starlette.types import Receive, Send

# Codes a close frame may not carry (RFC 6455 §7.4.1): "no status", "abnormal closure", "TLS failure".
_NO_STATUS, _ABNORMAL, _TLS = 1005, 1006, 1015


def sendable(code: int | None) -> int:
    """The code to put in a close frame for the other side, given the code one side closed with."""
    if code is None or code == _NO_STATUS:
        return 1000
    if code in (_ABNORMAL, _TLS) or not (1000 <= code <= 1014 or 3000 <= code <= 4999):
        return 1011  # the other side went away without a proper close: "unexpected condition"
    return code


async def relay(ws: aiohttp.ClientWebSocketResponse, receive: Receive, send: Send, touch: Callable[[], None]) -> None:
    state = _State()
    pump = asyncio.get_running_loop().create_task(_upstream_to_client(ws, send, touch, state))
    try:
        code, reason = await _client_to_upstream(ws, receive, touch)
    finally:
        state.client_gone = True
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    if not ws.closed:
        await ws.close(code=sendable(code), message=_reason(reason).encode("utf-8"))


def _reason(text: str) -> str:
    """A close reason that fits a close frame: at most 123 bytes of UTF-8."""
    return text.encode("utf-8")[:123].decode("utf-8", "ignore")


class _State:
    __slots__ = ("client_gone",)

    def __init__(self) -> None:
        self.client_gone = False


async def _client_to_upstream(
    ws: aiohttp.ClientWebSocketResponse, receive: Receive, touch: Callable[[], None]
) -> tuple[int | None, str]:
    """Forward the client's frames until it disconnects; its close code and reason."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            touch()
            text = message.get("text")
            try:
                if text is not None:
                    await ws.send_str(text)
                else:
                    await ws.send_bytes(message.get("bytes") or b"")
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass  # upstream is closing: its close reaches the client, whose disconnect ends this loop
        elif kind == "websocket.disconnect":
            return message.get("code"), message.get("reason") or ""


async def _upstream_to_client(
    ws: aiohttp.ClientWebSocketResponse, send: Send, touch: Callable[[], None], state: _State
) -> None:
    """Forward upstream's frames until it closes, then close the client with upstream's code."""
    reason = ""
    try:
        while True:
            message = await ws.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                touch()
                await send({"type": "websocket.send", "text": message.data})
            elif message.type is aiohttp.WSMsgType.BINARY:
                touch()
                await send({"type": "websocket.send", "bytes": message.data})
            else:  # CLOSE (code in data, reason in extra), CLOSING, CLOSED, ERROR
                if message.type is aiohttp.WSMsgType.CLOSE:
                    reason = message.extra or ""
                break
        if not state.client_gone:
            await send({"type": "websocket.close", "code": sendable(ws.close_code), "reason": _reason(reason)})
    except OSError:
        pass  # the client is gone (uvicorn's ClientDisconnected): its disconnect ends the other loop
