"""Server-sent events for the HTTP bridge, without any web framework: framing, keep-alives,
resume cursors and a count of open streams (`streaming_rag_client.web` puts them on the wire).

One SSE message per `StreamEvent`::

    event: chunk
    id: 1717171717171-3
    data: {"data": "Hello", "latency": 0.0123}

`data` is always a JSON object with two keys: `data`, the event's own data (a string for
`chunk`, an object for every other type, see `EventType`), and `latency`, seconds since the
answer's stream started. While no event is due, a comment line `: keep-alive` is sent every
`keepalive_s` seconds so proxies and browsers keep the connection open (also while the
client rides through a Redis outage). A stream whose client gave up on Redis
(`ServerUnavailable`, after its `reconnect_s`) ends cleanly with the comment
`: server unavailable; ...` (`UNAVAILABLE`), and a browser's `EventSource` reconnects by itself
with `Last-Event-ID`, resuming after the last event it got.

Every stream starts with `retry: <ms>` (`RETRY_MS`: how long an `EventSource` waits before it
reconnects). When the server shuts down (the `stopping` event is set), an open stream ends at
once with the comment `SHUTTING_DOWN`, so the browser reconnects, with `Last-Event-ID`, to
another instance.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator

from streaming_rag import StreamEvent
from streaming_rag.exceptions import InvalidRequest, JobNotFound, ServerUnavailable

__all__ = [
    "KEEPALIVE",
    "RETRY_MS",
    "SHUTTING_DOWN",
    "UNAVAILABLE",
    "OpenStreams",
    "event_stream",
    "format_event",
    "resume_cursor",
]

KEEPALIVE = b": keep-alive\n\n"
#: The last bytes of a stream whose Redis stayed unreachable for the client's `reconnect_s`.
UNAVAILABLE = b": server unavailable; reconnect with Last-Event-ID to resume\n\n"
#: The last bytes of a stream open while the server shuts down.
SHUTTING_DOWN = b": server shutting down; reconnect with Last-Event-ID\n\n"
#: Milliseconds a browser waits before reconnecting (the `retry:` field every stream starts with).
RETRY_MS = 3000
_ENTRY_ID = re.compile(r"\d{1,20}(-\d{1,20})?")


def format_event(event: StreamEvent) -> bytes:
    """One SSE message: `event:`, `id:` (when the event has one) and a one-line JSON `data:`."""
    payload = json.dumps(
        {"data": event.data, "latency": event.latency},
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,  # e.g. bytes in docs metadata: shown, never a crash mid-stream
    )
    head = f"event: {event.type.value}\n"
    if event.id is not None:
        head += f"id: {event.id}\n"
    return f"{head}data: {payload}\n\n".encode()


def resume_cursor(last_event_id: str | None, after: str | None) -> str | None:
    """The entry id to resume after: the `Last-Event-ID` header (a browser reconnecting sends
    it with the original URL, so it wins), else the `after` query parameter, else None.
    Raises `InvalidRequest` for anything that is not a stream entry id."""
    for name, value in (("Last-Event-ID", last_event_id), ("after", after)):
        if value is None or value.strip() == "":
            continue
        value = value.strip()
        if not _ENTRY_ID.fullmatch(value):
            raise InvalidRequest(
                f"{name} must be a stream entry id like 1717171717171-0 (the `id:` of an event "
                f"this endpoint sent), got {value[:80]!r}"
            )
        return value
    return None


class OpenStreams:
    """How many SSE responses are following a job right now (a gauge for metrics and tests)."""

    def __init__(self) -> None:
        self.active = 0
        self._idle: list[asyncio.Future[None]] = []

    def opened(self) -> None:
        self.active += 1

    def closed(self) -> None:
        self.active -= 1
        if self.active == 0:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_idle(self) -> None:
        """Return once no stream is open (at once if none is)."""
        if self.active == 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter


async def _next(events: AsyncIterator[StreamEvent]) -> StreamEvent | None:
    """The next event, or None at the end (or when the job vanished, e.g. expired)."""
    try:
        return await anext(events)
    except (StopAsyncIteration, JobNotFound):
        return None


async def event_stream(
    events: AsyncGenerator[StreamEvent, None],
    keepalive_s: float,
    streams: OpenStreams,
    *,
    stopping: asyncio.Event | None = None,
    retry_ms: int = RETRY_MS,
) -> AsyncGenerator[bytes, None]:
    """SSE bytes for `events`: first `retry: <retry_ms>`, then one message per event, with a
    keep-alive comment whenever `keepalive_s` pass without an event, and `SHUTTING_DOWN` (then
    the end) as soon as `stopping` is set. The pending read is never cancelled by a keep-alive
    (only by closing this generator, e.g. when the HTTP client disconnects), and closing this
    generator closes `events`, so no reader outlives the response. A job that vanishes
    mid-stream (expired) just ends the stream; one whose Redis stays unreachable ends it after
    `UNAVAILABLE`."""
    streams.opened()
    pending: asyncio.Task[StreamEvent | None] | None = None
    stop = asyncio.create_task((stopping or asyncio.Event()).wait())
    try:
        yield f"retry: {retry_ms}\n\n".encode()
        while True:
            if pending is None:
                pending = asyncio.create_task(_next(events))
            await asyncio.wait(
                {pending, stop}, timeout=keepalive_s, return_when=asyncio.FIRST_COMPLETED
            )
            if not pending.done():
                if stop.done():
                    yield SHUTTING_DOWN
                    return
                yield KEEPALIVE
                continue
            task, pending = pending, None
            try:
                event = task.result()
            except ServerUnavailable:
                yield UNAVAILABLE
                return
            if event is None:
                return
            yield format_event(event)
    finally:
        stop.cancel()
        try:
            if pending is not None:
                pending.cancel()
                await asyncio.wait({pending})
                if not pending.cancelled():
                    pending.exception()  # retrieved: no "exception was never retrieved" noise
            await events.aclose()
        finally:
            streams.closed()
