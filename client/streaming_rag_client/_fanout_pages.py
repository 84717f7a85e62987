"""Page delivery from the fan-out's shared logs, for sinks such as the HTTP bridge's SSE streams.

`follow_pages` hands out what a subscriber has not read yet as one page (a list of events) at
a time instead of one event at a time: a watcher woken by the reader's page takes it whole,
and watchers at the same place in the log get the very same page object (`_Watched.page`), so
a sink that encodes a page once (`streaming_rag_client._sse.format_page`) sends every one of
them the same bytes. Pages end at every event that is not a chunk (lifecycle events, the
terminal one, errors), so counting and ending need no look at each chunk.

While it waits, for the log or for one of its own reads (catch-up, gap, existence check: run as
a task of their own, so a nudge never cancels them), a page follower can be woken early by its
`Nudge` (a keep-alive timer, a shutdown): it then yields an empty page (`NUDGED`) and goes on
waiting when iterated again.
The guarantees are `Fanout.follow`'s (exactly once, in order, from the subscriber's own cursor;
it falls off and catches up by itself when it lags more than the buffer).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from streaming_rag import StreamEvent
from streaming_rag.stats import StreamStats
from streaming_rag.wire import JobKeys

from ._core import Follower, entry_id_key
from ._fanout_state import _Raise
from ._transport import READ_COUNT

if TYPE_CHECKING:
    from ._fanout import Fanout

__all__ = ["NUDGED", "Nudge", "follow_pages"]

#: The empty page a page follower yields when its `Nudge` woke it with nothing new to read.
NUDGED: Sequence[StreamEvent] = ()


class Nudge:
    """Wakes one waiting page follower: `poke()` (from a timer, a shutdown signal, or the
    stream's next page). One per follower; allocates nothing per poke."""

    __slots__ = ("_loop", "_poke", "_waiter")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._poke = self.poke  # one bound method, added to and removed from shared futures

    def poke(self, *_: object) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, shared: asyncio.Future[Any] | None = None) -> None:
        """Until `poke()`, or until `shared` (the stream's page future) completes. Cancelling
        this cancels only this follower's own future, never `shared`."""
        waiter = self._waiter = self._loop.create_future()
        if shared is not None:
            shared.add_done_callback(self._poke)
        try:
            await waiter
        finally:
            self._waiter = None
            if shared is not None and not shared.done():
                shared.remove_done_callback(self._poke)


async def follow_pages(
    fanout: Fanout,
    keys: JobKeys,
    cursor: str,
    stats: StreamStats,
    nudge: Nudge,
    *,
    known: bool = False,
) -> AsyncGenerator[Sequence[StreamEvent], None]:
    """Every event after `cursor` until the terminal one, as pages (never to be modified: they
    are shared), counted into `stats`; `NUDGED` when `nudge` woke it with nothing new."""
    stats.started()
    t = fanout._t
    f = Follower(keys, cursor=cursor)
    fanout.presence.enter(keys)
    try:
        while True:
            while True:  # 1. catch up by ourselves (nudges answered while a read is out)
                read = asyncio.ensure_future(t.read(keys, f.cursor, None))
                try:
                    while not read.done():
                        await nudge.wait(read)
                        if not read.done():
                            yield NUDGED
                finally:
                    read.cancel()
                events = f.take(read.result())
                stats.saw_page(events)
                if events:
                    yield events
                if f.done:
                    return
                if len(events) < READ_COUNT:
                    break
            f.settle()
            if f.done:
                return  # the job ended at or before our cursor
            if not known:
                check = asyncio.ensure_future(t.check(keys))
                try:
                    while not check.done():
                        await nudge.wait(check)
                        if not check.done():
                            yield NUDGED
                finally:
                    check.cancel()
                ended = f.on_idle(check.result())
                known = True
                if ended:
                    continue  # its terminal entry exists: one more read decides
            # 2. join the fan-out and read the gap, if the reader is ahead of us
            sub, ahead = fanout._join(keys, f.cursor)
            try:
                if entry_id_key(ahead) > entry_id_key(f.cursor):
                    gap = asyncio.ensure_future(t.range_after(keys, f.cursor, ahead))
                    try:
                        while not gap.done():
                            await nudge.wait(gap)
                            if not gap.done():
                                yield NUDGED
                    finally:
                        gap.cancel()
                    events = f.take(gap.result())
                    stats.saw_page(events)
                    if events:
                        yield events
                    if f.done:
                        return
                events = []
                # 3. live: whole pages from the shared log
                async for page in _live(sub, f, stats, nudge):
                    yield page
                if f.done:
                    return
            finally:
                fanout._leave(sub)
    finally:
        await fanout.presence.leave(keys)


async def _live(
    sub: Any, f: Follower, stats: StreamStats, nudge: Nudge
) -> AsyncGenerator[Sequence[StreamEvent], None]:
    """The pages of `sub`'s log from its index; returns when the follow is done (`f.done`) or
    when the subscriber must catch up by itself (dropped, or the reader stopped)."""
    watched = sub.watched
    log = watched.log
    skip_to: tuple[int, int] | None = entry_id_key(f.cursor)
    while True:
        base = watched.base
        start = sub.pos
        if start < base:
            return  # dropped (fell behind): catch up by ourselves, rejoin
        stop = base + len(log)
        if start >= stop:
            await nudge.wait(watched.waiting())
            if sub.pos >= watched.base + len(log):
                yield NUDGED
            continue
        marks = watched.marks
        mark = None
        if marks and marks[-1] >= start:
            m = marks[bisect_left(marks, start)]
            if m < stop:
                stop, mark = m + 1, m
        cached = watched.page
        if cached is not None and cached[0] == start and cached[1] == stop:
            page: list[Any] = cached[2]
        else:
            page = log[start - base : stop - base]
            watched.page = (start, stop, page)
        sub.pos = stop
        last: Any = page[-1] if mark is not None else None
        if type(last) is _Raise:
            page = page[:-1]
        if skip_to is not None:  # the reader was behind us: skip what we have already seen
            page = [e for e in page if entry_id_key(e.id or "0-0") > skip_to]
            if page:
                skip_to = None
        if page:
            if last is page[-1]:  # a lifecycle (or the terminal) event ends the page
                stats.add_chunks(len(page) - 1)
                stats.saw(last)
            else:
                stats.add_chunks(len(page))
            f.advance(page[-1])
            yield page
            if f.done:
                return
        if type(last) is _Raise:
            if last.exc is None:
                return  # the reader stopped: catch up by ourselves, rejoin
            raise last.exc
