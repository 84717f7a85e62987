"""The bridge's event streams over the fan-out's pages: one task per SSE connection (the ASGI
interface gives each response its own), woken once per page of the job's shared log, never per
event, and sent the page's frames, encoded once for every watcher at the same place
(`_sse.format_page`).

`page_stream` is `_sse.event_stream` for a client with fan-out: the same bytes on the wire (the
`retry:` line, the messages, keep-alives, `UNAVAILABLE`, `SHUTTING_DOWN`), but no task of its
own per watcher to read events and none to wait for the shutdown signal: a keep-alive timer and
the shutdown (`Stopping`) wake the follower's `Nudge` instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence

from streaming_rag import StreamEvent
from streaming_rag.exceptions import JobNotFound, ServerUnavailable

from ._fanout_pages import Nudge
from ._sse import KEEPALIVE, RETRY_MS, SHUTTING_DOWN, UNAVAILABLE, OpenStreams, format_page

__all__ = ["Stopping", "page_stream"]


class Stopping(asyncio.Event):
    """An `asyncio.Event` that also calls the callbacks registered with `on_set` when set: the
    bridge's shutdown signal, reaching every open stream without a task per stream."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: set[Callable[[], None]] = set()

    def on_set(self, callback: Callable[[], None]) -> None:
        self._callbacks.add(callback)

    def discard(self, callback: Callable[[], None]) -> None:
        self._callbacks.discard(callback)

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()


async def page_stream(
    pages: AsyncGenerator[Sequence[StreamEvent], None],
    nudge: Nudge,
    keepalive_s: float,
    streams: OpenStreams,
    *,
    stopping: Stopping | None = None,
    retry_ms: int = RETRY_MS,
) -> AsyncGenerator[bytes, None]:
    """SSE bytes for the pages of `pages` (a `follow_pages` woken early by `nudge`): first
    `retry: <retry_ms>`, then each page's messages as one chunk, a keep-alive whenever
    `keepalive_s` pass without anything sent, and `SHUTTING_DOWN` (then the end) once
    `stopping` is set. Closing this closes `pages`. A job that vanishes mid-stream ends the
    stream; one whose Redis stays unreachable ends it after `UNAVAILABLE`."""
    streams.opened()
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    keepalive_due = False
    poke = nudge.poke
    timer: asyncio.TimerHandle

    def tick() -> None:
        nonlocal timer, keepalive_due
        now = loop.time()
        if now - last_sent >= keepalive_s * 0.999:
            keepalive_due = True
            poke()
            timer = loop.call_at(now + keepalive_s, tick)
        else:
            timer = loop.call_at(last_sent + keepalive_s, tick)

    timer = loop.call_at(last_sent + keepalive_s, tick)
    if stopping is not None:
        stopping.on_set(poke)
    try:
        yield f"retry: {retry_ms}\n\n".encode()
        while True:
            if stopping is not None and stopping.is_set():
                yield SHUTTING_DOWN
                return
            try:
                page = await anext(pages)
            except (StopAsyncIteration, JobNotFound):
                return
            except ServerUnavailable:
                yield UNAVAILABLE
                return
            if page:
                last_sent = loop.time()
                keepalive_due = False
                yield format_page(page)
            elif keepalive_due:
                keepalive_due = False
                last_sent = loop.time()
                yield KEEPALIVE
    finally:
        timer.cancel()
        if stopping is not None:
            stopping.discard(poke)
        try:
            await pages.aclose()
        finally:
            streams.closed()
