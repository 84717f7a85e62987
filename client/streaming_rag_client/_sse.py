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
import contextlib
import json
import re
from collections.abc import AsyncGenerator, Sequence

from streaming_rag import StreamEvent
from streaming_rag.exceptions import InvalidRequest, JobNotFound, ServerUnavailable

__all__ = [
    "KEEPALIVE",
    "RETRY_MS",
    "SHUTTING_DOWN",
    "SSE_HEADERS",
    "UNAVAILABLE",
    "OpenStreams",
    "entry_key",
    "event_stream",
    "format_event",
    "format_page",
    "resume_cursor",
]

KEEPALIVE = b": keep-alive\n\n"
#: The last bytes of a stream whose Redis stayed unreachable for the client's `reconnect_s`.
UNAVAILABLE = b": server unavailable; reconnect with Last-Event-ID to resume\n\n"
#: The last bytes of a stream open while the server shuts down.
SHUTTING_DOWN = b": server shutting down; reconnect with Last-Event-ID\n\n"
#: Milliseconds a browser waits before reconnecting (the `retry:` field every stream starts with).
RETRY_MS = 3000
#: Headers of every event-stream response: no caching, no proxy buffering (nginx).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_ENTRY_ID = re.compile(r"\d{1,20}(-\d{1,20})?")


#: How many events' frames `format_event` remembers (FIFO): a few thousand events in flight.
FRAME_CACHE_SIZE = 4096
_frames: dict[int, tuple[StreamEvent, bytes]] = {}


def format_event(event: StreamEvent) -> bytes:
    """One SSE message: `event:`, `id:` (when the event has one) and a one-line JSON `data:`.

    Encoded once per event object: the fan-out hands the same `StreamEvent` to every watcher
    of a job, so the last `FRAME_CACHE_SIZE` frames of events with an `id` are kept (with the
    event itself, so its `id()` cannot be reused while cached) and returned as the same bytes.
    """
    if event.id is None:
        return _encode(event)
    hit = _frames.get(id(event))
    if hit is not None and hit[0] is event:
        return hit[1]
    frame = _encode(event)
    if len(_frames) >= FRAME_CACHE_SIZE:
        with contextlib.suppress(StopIteration, KeyError, RuntimeError):  # another thread won
            del _frames[next(iter(_frames))]
    _frames[id(event)] = (event, frame)
    return frame


#: How many pages' frames `format_page` remembers (FIFO).
PAGE_CACHE_SIZE = 256
_pages: dict[int, tuple[Sequence[StreamEvent], bytes]] = {}


def format_page(page: Sequence[StreamEvent]) -> bytes:
    """The SSE messages of a page of events (`_fanout_pages.follow_pages`), as one chunk.

    The fan-out hands watchers at the same place the same page object, so the last
    `PAGE_CACHE_SIZE` pages are kept (with the page, so its `id()` cannot be reused while
    cached) and every such watcher is sent the same bytes: one encoding per page, none per
    watcher."""
    if len(page) == 1:
        return format_event(page[0])
    hit = _pages.get(id(page))
    if hit is not None and hit[0] is page:
        return hit[1]
    frame = b"".join([format_event(e) for e in page])
    if len(_pages) >= PAGE_CACHE_SIZE:
        with contextlib.suppress(StopIteration, KeyError, RuntimeError):
            del _pages[next(iter(_pages))]
    _pages[id(page)] = (page, frame)
    return frame


def _encode(event: StreamEvent) -> bytes:
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


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable `(ms, seq)`."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


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


async def event_stream(
    events: AsyncGenerator[StreamEvent, None],
    keepalive_s: float,
    streams: OpenStreams,
    *,
    stopping: asyncio.Event | None = None,
    retry_ms: int = RETRY_MS,
) -> AsyncGenerator[bytes, None]:
    """SSE bytes for `events`: first `retry: <retry_ms>`, then one message per event (the
    messages that are ready when the client can take more come as one chunk), with a
    keep-alive comment whenever `keepalive_s` pass without anything sent, and `SHUTTING_DOWN`
    (then the end) as soon as `stopping` is set. One task reads `events` for the whole stream:
    the read is never cancelled by a keep-alive (only by closing this generator, e.g. when the
    HTTP client disconnects), and closing this generator closes `events`, so no reader
    outlives the response. A job that vanishes mid-stream (expired) just ends the stream; one
    whose Redis stays unreachable ends it after `UNAVAILABLE`.

    Per event and watcher this costs one frame lookup (`format_event`) and one wake-up; the
    keep-alive is one timer per `keepalive_s`, not one per event."""
    streams.opened()
    loop = asyncio.get_running_loop()
    ready: list[bytes] = []
    ended: list[BaseException | None] = []  # [None]: the end; [exc]: ended by exc
    wake: asyncio.Future[None] | None = None
    last_sent = loop.time()
    keepalive_due = False

    def notify(*_: object) -> None:
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def pump() -> None:
        try:
            async for event in events:
                ready.append(format_event(event))
                notify()
            ended.append(None)
        except JobNotFound:
            ended.append(None)
        except Exception as exc:
            ended.append(exc)
        finally:
            notify()

    timer: asyncio.TimerHandle

    def tick() -> None:
        nonlocal timer, keepalive_due
        now = loop.time()
        if now - last_sent >= keepalive_s * 0.999:
            keepalive_due = True
            notify()
            timer = loop.call_at(now + keepalive_s, tick)
        else:
            timer = loop.call_at(last_sent + keepalive_s, tick)

    stop = asyncio.create_task((stopping or asyncio.Event()).wait())
    stop.add_done_callback(notify)
    reader = asyncio.create_task(pump())
    timer = loop.call_at(last_sent + keepalive_s, tick)
    try:
        yield f"retry: {retry_ms}\n\n".encode()
        while True:
            if ready:
                data = ready[0] if len(ready) == 1 else b"".join(ready)
                ready.clear()
                last_sent = loop.time()
                yield data
                continue
            if stop.done():
                yield SHUTTING_DOWN
                return
            if ended:
                exc = ended[0]
                if isinstance(exc, ServerUnavailable):
                    yield UNAVAILABLE
                elif exc is not None:
                    raise exc
                return
            if keepalive_due:
                keepalive_due = False
                last_sent = loop.time()
                yield KEEPALIVE
                continue
            wake = loop.create_future()
            try:
                await wake
            finally:
                wake = None
    finally:
        timer.cancel()
        stop.cancel()
        try:
            if not reader.done():
                reader.cancel()
                await asyncio.wait({reader})
            await events.aclose()
        finally:
            streams.closed()
