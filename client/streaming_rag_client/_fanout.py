"""`Fanout`: one reader per async client following every stream its subscribers watch.

A web server with hundreds of SSE clients watching a few answers must not hold one blocking
XREAD connection per watcher. Here one reader task, on one dedicated connection, blocks in a
single XREAD over every watched stream, decodes each entry once, and hands the same immutable
`StreamEvent` to every subscriber's in-process buffer.

Exactly once, in order, from each subscriber's own cursor:

1. A subscriber first catches up by itself (non-blocking reads from its cursor), then joins.
2. Joining is synchronous (no await between reading the reader's cursor for the stream and
   adding the subscriber), so every entry after the reader's cursor reaches the subscriber's
   buffer. If the reader is ahead (it already delivered entries the subscriber has not seen),
   the subscriber reads that gap itself before taking from its buffer; if the reader is behind,
   buffered entries up to the subscriber's cursor are skipped.
3. A new stream interrupts the blocked XREAD at once (CLIENT UNBLOCK from another connection).
4. A slow subscriber never stalls the others: its buffer is bounded; on overflow it is dropped
   from the fan-out, reads the rest from its cursor itself, and joins again.

The reader also watches liveness: a stream with no new entry for `poll_interval_s` gets the
CHECK script (one pipeline for all idle streams), which appends the worker-lost or queue
ERROR when due, or reports the job missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

from streaming_rag import EventType, StreamEvent
from streaming_rag.exceptions import JobNotFound
from streaming_rag.wire import JobKeys, decode_entries
from streaming_rag.wire.codec import decode_raw_entry

from ._core import FINAL_STATUSES, StatsCounter, entry_id_key, stream_entries, text
from ._transport import READ_COUNT, AsyncTransport, raw_view

__all__ = ["Fanout"]

logger = logging.getLogger("streaming_rag.client")

_OVERFLOW = object()
_CHUNK = EventType.CHUNK
_MISSING = object()


class _Raise:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Subscriber:
    """One follower's bounded buffer; the reader pushes, the follower's task pops."""

    __slots__ = ("buffer", "keys", "limit", "loop", "skip_to", "waiter")

    def __init__(self, keys: JobKeys, limit: int) -> None:
        self.keys = keys
        self.buffer: deque[Any] = deque()
        self.limit = limit
        self.loop = asyncio.get_running_loop()
        self.waiter: asyncio.Future[None] | None = None
        self.skip_to: tuple[int, int] | None = None

    def push(self, item: Any) -> bool:
        """Buffer `item`; False when the buffer is full (the subscriber must catch up)."""
        full = len(self.buffer) >= self.limit
        self.buffer.append(_OVERFLOW if full else item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return not full


class Fanout:
    """The shared reader of one async client (one event loop)."""

    def __init__(
        self, transport: AsyncTransport, *, poll_interval_s: float, buffer_size: int = 10_000
    ) -> None:
        self._t = transport
        self._poll_s = poll_interval_s
        self._buffer_size = buffer_size
        self._subs: dict[str, set[_Subscriber]] = {}
        self._cursors: dict[str, str] = {}
        self._keys: dict[str, JobKeys] = {}
        self._last_seen: dict[str, float] = {}
        self._reader: asyncio.Task[None] | None = None
        self._conn: Any = None
        self._conn_id: int | None = None
        self._blocked = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- subscriber side ----------------------------------------------------------------------
    async def follow(
        self, keys: JobKeys, cursor: str, stats: StatsCounter, *, known: bool = False
    ) -> AsyncGenerator[StreamEvent, None]:
        """Every event after `cursor` until the terminal one, counted into `stats`. `known`:
        the job is known to exist (skips the existence check when nothing is there yet)."""
        stats.started()
        saw = stats.saw
        chunks = 0  # counted here, added to stats once at the end: no lock per event
        try:
            t = self._t
            final = False
            while True:
                # 1. catch up by ourselves
                while True:
                    events, done = self._decode(keys, await t.read(keys, cursor, None))
                    stats.saw_page(events)
                    for event in events:
                        cursor = event.id or cursor
                        yield event
                    if done:
                        return
                    if len(events) < READ_COUNT:
                        break
                if final:
                    return  # the job ended at or before our cursor
                if not known:
                    verdict = await t.check(keys)
                    if verdict == "missing":
                        raise JobNotFound(keys.job_id, keys.prefix)
                    known = True
                    if verdict in FINAL_STATUSES or verdict in ("lost", "withdrawn"):
                        final = True  # its terminal entry exists: one more read decides
                        continue
                # 2. join the fan-out and read the gap, if the reader is ahead of us
                sub = self._join(keys, cursor)
                try:
                    ahead = self._cursors[keys.events]
                    if entry_id_key(ahead) > entry_id_key(cursor):
                        gap = await t.range_after(keys, cursor, ahead)
                        events, done = self._decode(keys, gap)
                        stats.saw_page(events)
                        for event in events:
                            cursor = event.id or cursor
                            yield event
                        if done:
                            return
                    sub.skip_to = entry_id_key(cursor)
                    # 3. live (the hot loop: one iteration per event per subscriber)
                    buffer = sub.buffer
                    while True:
                        if not buffer:
                            sub.waiter = sub.loop.create_future()
                            try:
                                await sub.waiter
                            finally:
                                sub.waiter = None
                            continue
                        item = buffer.popleft()
                        if item is _OVERFLOW:
                            break  # dropped from the fan-out: catch up by ourselves, rejoin
                        if item is _MISSING:
                            raise JobNotFound(keys.job_id, keys.prefix)
                        if type(item) is _Raise:
                            raise item.exc
                        live: StreamEvent = item
                        if sub.skip_to is not None:
                            if entry_id_key(live.id or "0-0") <= sub.skip_to:
                                continue
                            sub.skip_to = None
                        cursor = live.id or cursor
                        if live.type is _CHUNK:
                            chunks += 1
                        else:
                            saw(live)
                        yield live
                        if live.is_terminal:
                            return
                finally:
                    self._leave(sub)
        finally:
            stats.add_chunks(chunks)

    def _decode(self, keys: JobKeys, response: Any) -> tuple[list[StreamEvent], bool]:
        if not response:
            return [], False
        events = decode_entries(keys.job_id, stream_entries(response))
        return events, bool(events) and events[-1].is_terminal

    def _join(self, keys: JobKeys, cursor: str) -> _Subscriber:
        sub = _Subscriber(keys, self._buffer_size)
        stream = keys.events
        subs = self._subs.get(stream)
        if subs is None:
            self._subs[stream] = {sub}
            self._cursors[stream] = cursor
            self._keys[stream] = keys
            self._last_seen[stream] = asyncio.get_running_loop().time()
            self._kick()
        else:
            subs.add(sub)
        return sub

    def _leave(self, sub: _Subscriber) -> None:
        stream = sub.keys.events
        subs = self._subs.get(stream)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[stream]
            self._cursors.pop(stream, None)
            self._keys.pop(stream, None)
            self._last_seen.pop(stream, None)

    def _kick(self) -> None:
        """Start the reader, or make it re-issue its XREAD with the new stream now."""
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._run(), name="streaming-rag-fanout")
        elif self._blocked and self._conn_id is not None:
            task = asyncio.create_task(self._unblock())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _unblock(self) -> None:
        conn_id = self._conn_id
        if conn_id is not None:
            with contextlib.suppress(Exception):
                await self._t.client.client_unblock(conn_id)

    async def aclose(self) -> None:
        """Stop the reader (subscribers still iterating read on their own)."""
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    # -- the reader -----------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        block_ms = max(1, int(self._poll_s * 1000))
        self._conn = raw_view(self._t.client, single_connection=True)  # its own connection
        try:
            self._conn_id = int(await self._conn.client_id())
            while self._subs:
                streams = dict(self._cursors)
                self._blocked = True
                try:
                    response = await self._conn.xread(streams, count=READ_COUNT, block=block_ms)
                finally:
                    self._blocked = False
                now = loop.time()
                pairs = response.items() if isinstance(response, dict) else response or ()
                for stream, entries in pairs:
                    name = text(stream)
                    self._deliver(name, entries, now)
                await self._check_idle(now)
        except Exception as exc:  # the connection failed: every subscriber catches up alone
            logger.warning("fan-out reader stopped (%s); subscribers read on their own", exc)
            for subs in self._subs.values():
                for sub in list(subs):
                    sub.push(_OVERFLOW)
            self._subs.clear()
            self._cursors.clear()
        finally:
            conn, self._conn, self._conn_id = self._conn, None, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.aclose()
            if self._subs:  # someone joined while this reader was leaving: start another
                self._reader = asyncio.create_task(self._run(), name="streaming-rag-fanout")

    def _deliver(self, stream: str, entries: list[Any], now: float) -> None:
        subs = self._subs.get(stream)
        if not subs or not entries:
            return
        keys = self._keys[stream]
        self._last_seen[stream] = now
        try:
            events: list[Any] = decode_entries(keys.job_id, entries)
        except Exception:  # a corrupt entry: decode one by one, hand its error on
            events = []
            for entry_id, fields in entries:
                try:
                    events.append(decode_raw_entry(keys.job_id, entry_id, fields))
                except Exception as exc:  # raised in each subscriber's iteration
                    events.append(_Raise(exc))
        for event in events:
            if type(event) is not _Raise:
                self._cursors[stream] = event.id
            for sub in tuple(subs):
                if not sub.push(event):
                    subs.discard(sub)  # overflowed: it catches up by itself and rejoins
        if not subs:
            self._leave_stream(stream)

    def _leave_stream(self, stream: str) -> None:
        self._subs.pop(stream, None)
        self._cursors.pop(stream, None)
        self._keys.pop(stream, None)
        self._last_seen.pop(stream, None)

    async def _check_idle(self, now: float) -> None:
        idle = [s for s, seen in self._last_seen.items() if now - seen >= self._poll_s]
        if not idle:
            return
        verdicts = await self._t.check_many([self._keys[s] for s in idle])
        for stream, verdict in zip(idle, verdicts, strict=True):
            self._last_seen[stream] = now
            if verdict == "missing":
                for sub in list(self._subs.get(stream, ())):
                    sub.push(_MISSING)
