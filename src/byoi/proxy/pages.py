"""The few answers the proxy writes itself: a 400 for a refused path, the trailing-slash redirect, and the
502 page when RStudio does not answer. Short, readable HTML; never a traceback, never an internal path."""

from __future__ import annotations

import html

import aiohttp
from starlette.types import Send

from byoi.proxy.client import Disconnected, Unreachable

_PAGE = (
    "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title></head>\n"
    "<body><h1>{title}</h1>\n<p>{text}</p>\n</body></html>\n"
)


def page(title: str, text: str) -> bytes:
    return _PAGE.format(title=html.escape(title), text=html.escape(text)).encode("utf-8")


def page_headers(body: bytes, extra: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"cache-control", b"no-store"),
        *extra,
    ]


async def send_page(send: Send, status: int, title: str, text: str, *extra: tuple[bytes, bytes]) -> None:
    body = page(title, text)
    await send({"type": "http.response.start", "status": status, "headers": page_headers(body, extra)})
    await send({"type": "http.response.body", "body": body})


async def send_redirect(send: Send, location: bytes, status: int) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"location", location), (b"content-length", b"0"), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": b""})


def not_answering(exc: BaseException, connect_timeout: float) -> str:
    """Why the upstream did not answer, in words fit for the user's page (no socket paths, no addresses)."""
    if isinstance(exc, (aiohttp.ClientConnectorError, Unreachable)):
        cause = exc.os_error.strerror or type(exc.os_error).__name__
        return f"RStudio is not answering: it could not be reached ({cause.lower()})"
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return f"RStudio is not answering: no connection within {connect_timeout:g} s"
    if isinstance(exc, (aiohttp.ServerDisconnectedError, Disconnected)):
        return "RStudio is not answering: it closed the connection before answering"
    return f"RStudio is not answering: {type(exc).__name__}"


async def send_bad_gateway(send: Send, exc: BaseException, connect_timeout: float) -> None:
    text = not_answering(exc, connect_timeout) + ". If the session is starting, reload this page in a few seconds."
    await send_page(send, 502, "RStudio is not answering", text, (b"retry-after", b"2"))
