"""The bridge's HTTP plumbing: the event-stream response class, and the handlers that turn
what a route raised into `{"detail": message}` JSON (422, 404, 503, 500, 401, 403, and any
Starlette `HTTPException` such as 413, 415 and 429, with its headers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import aclosing
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from streaming_rag.exceptions import (
    Forbidden,
    InvalidRequest,
    JobNotFound,
    QueueError,
    ServerUnavailable,
    Unauthorized,
)

from ._sse import SSE_HEADERS

__all__ = ["SSE_HEADERS", "EventStreamResponse", "exception_handlers"]


class EventStreamResponse(Response):
    """A `text/event-stream` response that always watches for the client's disconnect (on any
    ASGI server) and then closes its body generator at once, so no reader outlives it."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncGenerator[bytes, None]) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers(SSE_HEADERS)

    async def _stream(self, send: Send) -> None:
        async with aclosing(self.chunks) as chunks:
            start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            await send(start)
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        stream = asyncio.create_task(self._stream(send))
        listen = asyncio.create_task(until_disconnect())
        try:
            await asyncio.wait({stream, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, listen):
                task.cancel()
            await asyncio.wait({stream, listen})
        if not listen.cancelled():
            listen.exception()  # retrieved: a listener error means the client is gone
        exc = None if stream.cancelled() else stream.exception()
        if exc is not None and not isinstance(exc, OSError):  # OSError: client gone mid-write
            raise exc


def _detail(status: int, exc: BaseException | str) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def _invalid(request: Request, exc: Exception) -> Response:
    return _detail(422, exc)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _detail(404, exc)


async def _unavailable(request: Request, exc: Exception) -> Response:
    return _detail(503, exc)


async def _queue_error(request: Request, exc: Exception) -> Response:
    return _detail(500, exc)


async def _unauthorized(request: Request, exc: Exception) -> Response:
    response = _detail(401, exc)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def _forbidden(request: Request, exc: Exception) -> Response:
    return _detail(403, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]


def exception_handlers() -> dict[Any, Handler]:
    """What the bridge registers with Starlette (most specific class wins)."""
    return {
        InvalidRequest: _invalid,
        JobNotFound: _not_found,
        ServerUnavailable: _unavailable,
        QueueError: _queue_error,
        Unauthorized: _unauthorized,
        Forbidden: _forbidden,
        HTTPException: _http_error,
    }
