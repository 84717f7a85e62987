"""The HTTP bridge under test: real uvicorn on a loopback port, an in-process worker, httpx,
and a strict SSE parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from streaming_rag import StreamingRAG
from streaming_rag_client import StreamingRAGClient
from streaming_rag_client.web import create_app
from tests.helpers_queue import running_worker
from tests.queue_apps import make_rag

WAIT_S = 30.0  # liveness guard only: the awaited conditions come far sooner
MOUNT = "/rag"


class _Server(uvicorn.Server):
    """uvicorn with a `ready` event set once it listens, and pytest's signal handlers kept."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn in this event loop on a free 127.0.0.1 port; yield its origin."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({task, ready}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if not server.ready.is_set():
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        ready.cancel()
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, WAIT_S)
        sock.close()


@dataclass
class Stack:
    origin: str  # http://127.0.0.1:PORT
    http: httpx.AsyncClient  # base_url: origin + MOUNT
    app: Starlette  # the bridge (mounted at MOUNT)
    rag: StreamingRAGClient

    def url(self, path: str) -> str:
        """An absolute URL for a path the bridge returned (it includes the mount point)."""
        return self.origin + path


@contextlib.asynccontextmanager
async def web_stack(
    redis_url: str,
    prefix: str,
    llm: Any = None,
    *,
    keepalive_s: float = 15.0,
    pipeline: StreamingRAG | None = None,
    **bridge: Any,
) -> AsyncIterator[Stack]:
    """Worker serving `pipeline` (default `make_rag(llm)`) + the bridge (`create_app(rag,
    keepalive_s=..., **bridge)`) mounted at MOUNT in a parent app (as in FastAPI) served by
    uvicorn + an httpx client."""
    rag = StreamingRAGClient(redis_url, prefix=prefix, poll_interval_s=0.1)
    try:
        bridge_app = create_app(rag, keepalive_s=keepalive_s, **bridge)
        root = Starlette(routes=[Mount(MOUNT, app=bridge_app, name="rag")])
        async with (
            running_worker(redis_url, prefix, pipeline or make_rag(llm)),
            serving(root) as origin,
            httpx.AsyncClient(base_url=origin + MOUNT, timeout=WAIT_S) as http,
        ):
            yield Stack(origin, http, bridge_app, rag)
    finally:
        await rag.aclose()


@dataclass(frozen=True)
class Message:
    event: str
    id: str | None
    data: Any  # the decoded JSON of the data lines


@dataclass(frozen=True)
class Comment:
    text: str


async def sse(response: httpx.Response) -> AsyncIterator[Message | Comment]:
    """Parse an SSE body strictly: `field: value` lines, messages dispatched on a blank line,
    `:` comment lines; fails on unknown fields and on a message cut off at the end."""
    assert response.headers["content-type"].startswith("text/event-stream")
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                yield Message(fields.get("event", "message"), fields.get("id"), payload)
            fields, data = {}, []
        elif line.startswith(":"):
            yield Comment(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            assert name in ("event", "id", "data", "retry"), f"unknown SSE field {line!r}"
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
    assert not fields and not data, f"stream ended inside a message: {fields} {data}"


async def messages(items: AsyncIterator[Message | Comment]) -> list[Message]:
    """Every further message of `sse(response)` (comments dropped) until the stream ends."""
    return [m async for m in items if isinstance(m, Message)]


def as_messages(events: list[Any]) -> list[Message]:
    """`StreamEvent`s as the bridge should frame them."""
    return [Message(e.type.value, e.id, {"data": e.data, "latency": e.latency}) for e in events]
