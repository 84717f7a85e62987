"""The HTTP bridge: a Starlette app over `StreamingRAGClient` (extra `web`), mountable in
FastAPI with `app.mount("/rag", create_app())`.

Routes (relative to where the app is mounted):

- `POST /answers` `{"query": str, "context"?: object}` → 202 `{"job_id", "events_url"}`
  (and `Location:` the status URL); invalid requests → 422 `{"detail": <the client's message>}`.
- `GET /answers/{job_id}/events` → `text/event-stream`, one message per event (framing and
  the `data:` JSON in `streaming_rag_client._sse`); resumes after `Last-Event-ID` or
  `?after=<entry id>`; `: keep-alive` comments every `keepalive_s` while waiting; ends after
  the terminal event.
- `GET /answers/{job_id}` → `{"job_id", "status"}`, plus `"answer"` (the chunks joined) once
  the job has ended (done, failed, cancelled) and `"error"` (the ERROR event's data) if any.
- `DELETE /answers/{job_id}` → `{"cancelled": bool}` (false: it had already ended).
- `GET /` → a small page that asks a question and renders the answer live (`?job=<id>`
  watches an existing job).

Unknown jobs → 404, an unreachable Redis (for longer than the client's `reconnect_s`) → 503,
each as `{"detail": message}`.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from streaming_rag import EventType
from streaming_rag.exceptions import InvalidRequest, JobNotFound, QueueError, ServerUnavailable
from streaming_rag.wire import DEFAULT_PREFIX, validate_job_id

from ._client import StreamingRAGClient
from ._core import JobStatus
from ._sse import OpenStreams, event_stream, resume_cursor

__all__ = ["MAX_BODY_BYTES", "EventStreamResponse", "create_app"]

#: The largest `POST /answers` body read (a 32,000-character query fits many times over).
MAX_BODY_BYTES = 1 << 20
PREFIX_ENV = "STREAMING_RAG_PREFIX"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ENDED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


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


async def _json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or `InvalidRequest` saying what is wrong with it."""
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequest(f"request body is over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidRequest(f"request body must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            'request body must be a JSON object like {"query": "...", "context": {...}}, '
            f"got {type(data).__name__}"
        )
    unknown = sorted(set(data) - {"query", "context"})
    if unknown:
        raise InvalidRequest(f"unknown fields {unknown}: expected query and optional context")
    return data


class _Bridge:
    """The route handlers, sharing one client."""

    def __init__(self, rag: StreamingRAGClient, keepalive_s: float, router: Starlette) -> None:
        self.rag = rag
        self.keepalive_s = keepalive_s
        self.router = router
        self.streams = OpenStreams()
        page = (
            files("streaming_rag_client").joinpath("static/index.html").read_text(encoding="utf-8")
        )
        self.page = page

    def url(self, request: Request, name: str, **params: str) -> str:
        """The path of route `name` as the browser sees it (with the mount point / root path)."""
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return root + str(self.router.url_path_for(name, **params))

    def job_id(self, request: Request) -> str:
        job_id = str(request.path_params["job_id"])
        try:
            return validate_job_id(job_id)
        except InvalidRequest:  # no job can have this id
            raise JobNotFound(job_id, self.rag.prefix) from None

    async def index(self, request: Request) -> Response:
        answers = html.escape(self.url(request, "submit"), quote=True)
        return HTMLResponse(self.page.replace("{{ANSWERS_URL}}", answers))

    async def submit(self, request: Request) -> Response:
        data = await _json_body(request)
        query: Any = data.get("query")  # validated by the client: its message, its rules
        job_id = await self.rag.asubmit(query, data.get("context"))
        body = {"job_id": job_id, "events_url": self.url(request, "events", job_id=job_id)}
        location = self.url(request, "answer", job_id=job_id)
        return JSONResponse(body, status_code=202, headers={"Location": location})

    async def events(self, request: Request) -> Response:
        job_id = self.job_id(request)
        headers, query = request.headers, request.query_params
        after = resume_cursor(headers.get("last-event-id"), query.get("after"))
        if await self.rag.astatus(job_id) is JobStatus.NOT_FOUND:
            raise JobNotFound(job_id, self.rag.prefix)
        events = self.rag.aevents(job_id, after=after)
        return EventStreamResponse(event_stream(events, self.keepalive_s, self.streams))

    async def answer(self, request: Request) -> Response:
        job_id = self.job_id(request)
        status = await self.rag.astatus(job_id)
        if status is JobStatus.NOT_FOUND:
            raise JobNotFound(job_id, self.rag.prefix)
        body: dict[str, Any] = {"job_id": job_id, "status": status.value}
        if status in _ENDED:
            chunks: list[str] = []
            async with aclosing(self.rag.aevents(job_id)) as events:
                async for event in events:
                    if event.type is EventType.CHUNK:
                        chunks.append(event.data)
                    elif event.type is EventType.ERROR:
                        body["error"] = event.data
            body["answer"] = "".join(chunks)
        return JSONResponse(body)

    async def cancel(self, request: Request) -> Response:
        return JSONResponse({"cancelled": await self.rag.acancel(self.job_id(request))})


async def _invalid(request: Request, exc: Exception) -> Response:
    return _detail(422, exc)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _detail(404, exc)


async def _unavailable(request: Request, exc: Exception) -> Response:
    return _detail(503, exc)


async def _queue_error(request: Request, exc: Exception) -> Response:
    return _detail(500, exc)


def create_app(
    client: StreamingRAGClient | None = None,
    *,
    redis_url: str | None = None,
    prefix: str | None = None,
    start_timeout: float | None = None,
    keepalive_s: float = 15.0,
    **client_kwargs: Any,
) -> Starlette:
    """The bridge as a Starlette app over `client`, or over a client it creates (and closes on
    shutdown) from `redis_url` (default `$REDIS_URL`, else redis://127.0.0.1:6379/0), `prefix`
    (default `$STREAMING_RAG_PREFIX`, else `srag`), `start_timeout` (default 30 s) and any
    other `StreamingRAGClient` keyword. With no arguments it reads only the environment, so
    `uvicorn --factory streaming_rag_client.web:create_app` serves it. `reconnect_s` (a client
    keyword, default 30 s) is how long a request or an event stream rides through a Redis
    outage: requests then answer 503, and event streams end with the `: server unavailable`
    comment (keep-alives flow meanwhile).

    Mounted in another app (`app.mount("/rag", create_app(...))`) its lifespan does not run:
    pass your own client then, and close it in your app's lifespan."""
    if not keepalive_s > 0:
        raise InvalidRequest(f"keepalive_s must be > 0 seconds, got {keepalive_s}")
    owns = client is None
    if client is None:
        client = StreamingRAGClient(
            redis_url,
            prefix=prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX,
            start_timeout=30.0 if start_timeout is None else start_timeout,
            **client_kwargs,
        )
    elif redis_url is not None or prefix is not None or start_timeout is not None or client_kwargs:
        raise TypeError("pass either a client or the settings to build one, not both")
    rag = client

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owns:
                await rag.aclose()

    app = Starlette(
        lifespan=lifespan,
        exception_handlers={
            InvalidRequest: _invalid,
            JobNotFound: _not_found,
            ServerUnavailable: _unavailable,
            QueueError: _queue_error,
        },
    )
    bridge = _Bridge(rag, keepalive_s, app)
    for path, endpoint, method, name in [
        ("/", bridge.index, "GET", "index"),
        ("/answers", bridge.submit, "POST", "submit"),
        ("/answers/{job_id}", bridge.answer, "GET", "answer"),
        ("/answers/{job_id}", bridge.cancel, "DELETE", "cancel"),
        ("/answers/{job_id}/events", bridge.events, "GET", "events"),
    ]:
        app.router.routes.append(Route(path, endpoint, methods=[method], name=name))
    app.state.rag = rag
    app.state.streams = bridge.streams
    return app
