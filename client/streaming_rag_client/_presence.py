"""Presence: every subscriber that follows a job is counted as a watcher while it follows
(`streaming_rag.wire.presence` has the key and its two scripts).

- A subscriber with its own reads (the sync client's `follow`, the async client's with
  ``fanout=False``) registers a watcher id of its own, refreshed by its read loop before a read
  once `refresh_s` has passed (a read blocks at most `poll_interval_s`, so no timer is needed),
  and deleted when it stops (`watched_follow`, `awatched_follow`).
- The fan-out (`FanoutPresence`, one per `Fanout`) counts its subscribers per stream in
  memory (`enter` / `leave`: dict updates, no I/O) and one task writes, for every stream whose
  count changed and every `refresh_s` for all, one field per stream (watcher id = the
  fan-out's, value = its count) in one pipelined round trip (one call per stream's slot on a
  cluster). So 1,000 SSE watchers in one bridge process cost one write per watched stream per
  refresh period, and a join or leave shows within a round trip.

A watcher's field lives `ttl_ms` (3 refresh periods) past its last refresh, so a process that
dies stops counting within that window; a clean stop deletes it at once (one attempt, errors
ignored: it expires anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Generator
from typing import Any

from streaming_rag import StreamEvent
from streaming_rag.stats import StreamStats
from streaming_rag.wire import JobKeys

from ._core import READ_COUNT, Follower, afollow, follow_pages

__all__ = ["FanoutPresence", "awatched_follow", "presence_window", "watched_follow"]

logger = logging.getLogger("streaming_rag.client")

#: The shortest refresh period, whatever `poll_interval_s` says (a fast-polling client need
#: not rewrite its presence 20 times a second).
MIN_REFRESH_S = 0.5
#: A watcher counts for this many refresh periods after its last refresh.
TTL_PERIODS = 3


def presence_window(poll_interval_s: float) -> tuple[float, int]:
    """The refresh period (seconds) and a watcher's time to live (ms) for a client polling
    every `poll_interval_s`."""
    refresh_s = max(poll_interval_s, MIN_REFRESH_S)
    return refresh_s, int(refresh_s * TTL_PERIODS * 1000)


def _watcher_id() -> str:
    return uuid.uuid4().hex


class _Watching:
    """One own-reads subscriber's watcher: refreshed before a read when due."""

    def __init__(self, t: Any, keys: JobKeys, poll_interval_s: float) -> None:
        self.t = t
        self.keys = keys
        self.id = _watcher_id()
        self.refresh_s, self.ttl_ms = presence_window(poll_interval_s)
        self.next_at: float | None = None  # None: never written

    def due(self) -> bool:
        return self.next_at is None or time.monotonic() >= self.next_at

    def written(self) -> None:
        self.next_at = time.monotonic() + self.refresh_s


class _SyncReads(_Watching):
    """`SyncReads` over the sync transport, keeping the subscriber's watcher fresh."""

    def read(
        self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = READ_COUNT
    ) -> Any:
        if self.due():
            self.t.watch(self.keys, [(self.id, 1)], self.ttl_ms)
            self.written()
        return self.t.read(keys, cursor, block_ms, count)

    def check(self, keys: JobKeys) -> str:
        return str(self.t.check(keys))

    def stop(self) -> None:
        if self.next_at is not None:
            with contextlib.suppress(Exception):
                self.t.watch(self.keys, [(self.id, 0)], self.ttl_ms, retry=False)


class _AsyncReads(_Watching):
    """`AsyncReads` over the async transport, keeping the subscriber's watcher fresh."""

    async def read(
        self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = READ_COUNT
    ) -> Any:
        if self.due():
            await self.t.watch(self.keys, [(self.id, 1)], self.ttl_ms)
            self.written()
        return await self.t.read(keys, cursor, block_ms, count)

    async def check(self, keys: JobKeys) -> str:
        return str(await self.t.check(keys))

    async def stop(self) -> None:
        if self.next_at is not None:
            with contextlib.suppress(Exception):
                await self.t.watch(self.keys, [(self.id, 0)], self.ttl_ms, retry=False)


def watched_follow(
    t: Any, f: Follower, *, block_ms: int, stats: StreamStats, poll_interval_s: float
) -> Generator[list[StreamEvent], None, None]:
    """`follow_pages` over the sync transport `t` (pages of events: `flatten` them),
    counted as one watcher of the job meanwhile."""
    reads = _SyncReads(t, f.keys, poll_interval_s)
    try:
        yield from follow_pages(reads, f, block_ms=block_ms, stats=stats)
    finally:
        reads.stop()


async def awatched_follow(
    t: Any, f: Follower, *, block_ms: int, stats: StreamStats, poll_interval_s: float
) -> AsyncGenerator[StreamEvent, None]:
    """`afollow` over the async transport `t`, counted as one watcher of the job meanwhile."""
    reads = _AsyncReads(t, f.keys, poll_interval_s)
    try:
        async with contextlib.aclosing(afollow(reads, f, block_ms=block_ms, stats=stats)) as it:
            async for event in it:
                yield event
    finally:
        await reads.stop()


class FanoutPresence:
    """The watchers of one `Fanout`: its subscribers counted per stream, written by one task
    (see the module docstring)."""

    def __init__(self, transport: Any, *, poll_interval_s: float) -> None:
        self._t = transport
        self.id = _watcher_id()
        self.refresh_s, self.ttl_ms = presence_window(poll_interval_s)
        self._counts: dict[str, int] = {}  # by the job's watchers key
        self._keys: dict[str, JobKeys] = {}
        self._written: dict[str, int] = {}  # what the server holds for us (as far as we know)
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None  # the writer's call in flight
        self._closing = False

    def count(self, keys: JobKeys) -> int:
        """How many of this fan-out's subscribers follow the job now."""
        return self._counts.get(keys.watchers, 0)

    def enter(self, keys: JobKeys) -> None:
        """A subscriber starts following the job."""
        name = keys.watchers
        self._keys[name] = keys
        self._counts[name] = self._counts.get(name, 0) + 1
        self._wake()

    async def leave(self, keys: JobKeys) -> None:
        """A subscriber stopped following the job. The last one of this fan-out deletes its
        field before it returns (one attempt; the writer task makes sure), so a status read
        after a follow ended never counts it."""
        name = keys.watchers
        left = self._counts.get(name, 0) - 1
        if left > 0:
            self._counts[name] = left
            self._wake()
            return
        self._counts.pop(name, None)
        self._wake()
        written = self._written.get(name)
        if written is None and self._writing is not None:
            # the writer may be writing this job's field right now: let that land first
            with contextlib.suppress(Exception):
                await asyncio.shield(self._writing)
            if name in self._counts:
                return  # someone joined meanwhile
            written = self._written.get(name)
        if written is None:
            return  # nothing there
        with contextlib.suppress(Exception):
            await self._t.watch(keys, [(self.id, 0)], self.ttl_ms, retry=False)
            if name not in self._counts and self._written.get(name) == written:
                self._written.pop(name, None)
                self._keys.pop(name, None)

    def _wake(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="streaming-rag-presence")

    def _batch(self, refresh: bool) -> list[tuple[str, int]]:
        """The (watchers key, count) pairs to write now: every change, and with `refresh`
        every stream still watched."""
        names = set(self._counts) | set(self._written)
        batch = []
        for name in names:
            count = self._counts.get(name, 0)
            if count != self._written.get(name, 0) or (refresh and count > 0):
                batch.append((name, count))
        return batch

    async def _write(self, batch: list[tuple[str, int]]) -> None:
        self._writing = writing = asyncio.get_running_loop().create_future()
        try:
            await self._t.watch_many(
                [(self._keys[name], [(self.id, count)]) for name, count in batch], self.ttl_ms
            )
        finally:
            writing.set_result(None)
            if self._writing is writing:
                self._writing = None
        for name, count in batch:
            if count > 0:
                self._written[name] = count
            else:
                self._written.pop(name, None)
                if name not in self._counts:
                    self._keys.pop(name, None)

    async def _run(self) -> None:
        assert self._changed is not None
        changed = self._changed
        loop = asyncio.get_running_loop()
        next_refresh = 0.0
        while (self._counts or self._written) and not self._closing:
            changed.clear()
            now = loop.time()
            refresh = now >= next_refresh
            batch = self._batch(refresh)
            if batch:
                try:
                    await self._write(batch)
                except Exception as exc:  # an outage: the next round writes it again
                    task = asyncio.current_task()
                    if self._closing or (task is not None and task.cancelling()):
                        raise asyncio.CancelledError from exc  # a cancel turned into an error
                    logger.debug("presence refresh failed: %s", exc)
                    next_refresh = now + self.refresh_s
                    await asyncio.sleep(self.refresh_s)  # a policy's wait, not a synchronisation
                    continue
            if refresh:
                next_refresh = now + self.refresh_s
            if not (self._counts or self._written):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), max(0.0, next_refresh - loop.time()))

    async def aclose(self) -> None:
        """Stop writing; delete this fan-out's fields (one attempt, errors ignored)."""
        self._closing = True  # the writer stops at its next step even if a cancel is lost
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()  # its CancelledError is a result here; the caller's propagates
            await asyncio.gather(task, return_exceptions=True)
        self._counts.clear()
        batch = self._batch(False)
        if batch:
            with contextlib.suppress(Exception):
                await self._write(batch)
