"""`Fanout`: one reader per async client following every stream its subscribers watch.

A web server with hundreds of SSE clients watching a few answers must not hold one blocking
XREAD connection per watcher, nor pay a wake-up per watcher per event. Here one reader task, on
one dedicated connection, blocks in a single XREAD over every watched stream, decodes each entry
once, and appends the page to that stream's shared log (`_fanout_state._Watched`): a list of
immutable `StreamEvent`s with a base index, which every subscriber reads at its own index. After
appending a page the reader completes the stream's one waiter future: every subscriber that had
nothing left to read wakes once per page; one still busy with unread entries does not wait at
all, and goes through them by index with no await machinery beyond its generator's yield.

Exactly once, in order, from each subscriber's own cursor:

1. A subscriber first catches up by itself (non-blocking reads from its cursor), then joins.
2. Joining is synchronous (no await between reading the reader's cursor for the stream and
   taking the log's end as the subscriber's index), so every entry after the reader's cursor
   is in the log past that index. If the reader is ahead (it already delivered entries the
   subscriber has not seen), the subscriber reads that gap itself before reading the log; if
   the reader is behind, log entries up to the subscriber's cursor are skipped.
3. A new stream interrupts the blocked XREAD at once (CLIENT UNBLOCK from another connection).
4. A slow subscriber never stalls the others nor grows memory without bound: the log is trimmed
   to the slowest subscriber, and once it would hold more than `buffer_size` entries, every
   subscriber further behind is dropped from the fan-out (its index falls below the log's base),
   reads the rest from its own cursor itself, and joins again.
5. Errors are log entries too (`_Raise`): a corrupt entry, `JobNotFound` from the liveness
   CHECK, the reader's `ServerUnavailable`, raised by every subscriber reaching them; the
   `_OVERFLOW` entry (the reader stopped) sends every subscriber to catch up by itself.

On a Redis Cluster one XREAD cannot span slots, so the fan-out keeps one reader per *bucket*
(the jobs' hash tag, `streaming_rag.wire.keys.BUCKETS` of them): every stream of a bucket lives
in one slot, so one blocking XREAD, on a connection to the node that owns the slot, follows
all of a bucket's watched streams, and CLIENT UNBLOCK goes to that node. When the slot moves
(a resharding or a failover answers the blocked read with MOVED, or ASK / TRYAGAIN while it
is being migrated), the reader refreshes the cluster's slot map, reconnects to the slot's
owner and reads again from the same cursors, with the transport's backoff.

The reader also watches liveness: a stream with no new entry for `poll_interval_s` gets the
CHECK script (one pipeline for all idle streams), which appends the worker-lost or queue
ERROR when due, or reports the job missing.

Outages: the reader's XREAD and CHECKs run through the transport's retry loop
(`AsyncTransport.call`), so on a dropped connection it reconnects and reads again from the
same cursors for up to `reconnect_s`; subscribers keep waiting on their logs and miss
nothing. A reconnected connection has a new CLIENT ID, so the reader asks for it again before
its next XREAD (until then nobody sends CLIENT UNBLOCK: a stale id could name another
client). If the server stays away longer, every subscriber raises the reader's
`ServerUnavailable`. Any other failure of the reader makes each subscriber catch up by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import redis.exceptions

from streaming_rag import StreamEvent
from streaming_rag.exceptions import JobNotFound, ServerUnavailable
from streaming_rag.stats import StreamStats
from streaming_rag.wire import JobKeys, decode_entries
from streaming_rag.wire.codec import decode_raw_entry

from ._core import Follower, entry_id_key, text
from ._fanout_state import (
    _CHUNK,
    _OVERFLOW,
    _Group,
    _Raise,
    _Subscriber,
    _Unwatched,
    _Watched,
)
from ._outages import node_reader, xread_command
from ._presence import FanoutPresence
from ._transport import READ_COUNT, AsyncTransport, raw_view

__all__ = ["Fanout"]

logger = logging.getLogger("streaming_rag.client")


class Fanout:
    """The shared readers of one async client (one event loop): one on a single server, one
    per watched bucket on a cluster."""

    def __init__(
        self, transport: AsyncTransport, *, poll_interval_s: float, buffer_size: int = 10_000
    ) -> None:
        self._t = transport
        self._poll_s = poll_interval_s
        self._buffer_size = buffer_size
        self._groups: dict[int | None, _Group] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: every subscriber counts as a watcher of its job while it follows (`_presence`)
        self.presence = FanoutPresence(transport, poll_interval_s=poll_interval_s)

    @property
    def watching(self) -> int:
        """How many streams the shared readers follow now."""
        return sum(len(g.watched) for g in self._groups.values())

    @property
    def readers(self) -> int:
        """How many shared readers run now (one per watched bucket on a cluster)."""
        return sum(1 for g in self._groups.values() if g.reader is not None and not g.reader.done())

    # -- subscriber side ----------------------------------------------------------------------
    async def follow(
        self,
        keys: JobKeys,
        cursor: str,
        stats: StreamStats,
        *,
        known: bool = False,
        fresh: bool = False,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Every event after `cursor` until the terminal one, counted into `stats`. `known`:
        the job is known to exist (skips the existence check when nothing is there yet).
        `fresh`: the caller has just submitted the job and follows it from the start, so it
        joins the shared reader at once (no catch-up read first: the reader's blocking XREAD
        from the stream's start is the next round trip, and a reader that was not running
        needs no CLIENT UNBLOCK)."""
        stats.started()
        saw = stats.saw
        chunks = 0  # counted here, added to stats once at the end: no lock per event
        f = Follower(keys, cursor=cursor)
        self.presence.enter(keys)
        try:
            t = self._t
            skip_catch_up = fresh and cursor == "0-0"
            events: list[StreamEvent] = []
            event: StreamEvent | None = None
            while True:
                # 1. catch up by ourselves (not on a fresh job's first pass: nothing to catch)
                while not skip_catch_up:
                    events = f.take(await t.read(keys, f.cursor, None))
                    stats.saw_page(events)
                    for event in events:
                        yield event
                    if f.done:
                        return
                    if len(events) < READ_COUNT:
                        break
                if not skip_catch_up:
                    f.settle()
                skip_catch_up = False
                if f.done:
                    return  # the job ended at or before our cursor
                if not known:
                    ended = f.on_idle(await t.check(keys))
                    known = True
                    if ended:
                        continue  # its terminal entry exists: one more read decides
                # 2. join the fan-out and read the gap, if the reader is ahead of us
                sub, ahead = self._join(keys, f.cursor)
                watched = sub.watched
                try:
                    if entry_id_key(ahead) > entry_id_key(f.cursor):
                        events = f.take(await t.range_after(keys, f.cursor, ahead))
                        stats.saw_page(events)
                        for event in events:
                            yield event
                        if f.done:
                            return
                    events, event = [], None  # not kept alive while following: fewer GC objects
                    skip_to: tuple[int, int] | None = entry_id_key(f.cursor)
                    # 3. live: read the shared log by index (the hot loop: one iteration per
                    # event per subscriber, no await unless the log has nothing unread)
                    log = watched.log
                    last: StreamEvent | None = None
                    while True:
                        i = sub.pos - watched.base
                        if i >= len(log):
                            waiter = watched.waiting()
                            try:
                                await waiter
                            except asyncio.CancelledError:
                                task = asyncio.current_task()
                                if task is None or task.cancelling():
                                    raise  # we are cancelled, not just the shared future
                            continue
                        if i < 0:
                            break  # dropped (fell behind): catch up by ourselves, rejoin
                        item = log[i]
                        sub.pos += 1
                        if type(item) is _Raise:
                            if item.exc is None:
                                break  # the reader stopped: catch up by ourselves, rejoin
                            raise item.exc
                        live: StreamEvent = item
                        if skip_to is not None:
                            if entry_id_key(live.id or "0-0") <= skip_to:
                                continue
                            skip_to = None
                        last = live
                        if live.type is _CHUNK:
                            chunks += 1
                            yield live
                            continue
                        saw(live)
                        if live.is_terminal:
                            f.advance(live)
                            yield live
                            return
                        yield live
                    if last is not None:
                        f.advance(last)  # the cursor the catch-up reads from
                finally:
                    self._leave(sub)
        finally:
            stats.add_chunks(chunks)
            await self.presence.leave(keys)

    def _join(self, keys: JobKeys, cursor: str) -> tuple[_Subscriber, str]:
        """Add a subscriber at the end of the stream's log; return it and the reader's cursor
        for the stream. Synchronous: every entry the reader reads after this is in the log
        past the subscriber's index."""
        stream = keys.events
        bucket = keys.bucket if self._t.cluster else None
        group = self._groups.get(bucket)
        if group is None:
            group = self._groups[bucket] = _Group(bucket)
        watched = group.watched.get(stream)
        if watched is None:
            now = asyncio.get_running_loop().time()
            watched = _Watched(keys, cursor, now, self._buffer_size)
            group.watched[stream] = watched
            self._kick(group)
        return watched.join(), watched.follower.cursor

    def _leave(self, sub: _Subscriber) -> None:
        watched = sub.watched
        watched.subs.discard(sub)
        if watched.subs:
            return
        keys = watched.keys
        group = self._groups.get(keys.bucket if self._t.cluster else None)
        if group is not None and group.watched.get(keys.events) is watched:
            del group.watched[keys.events]

    def _kick(self, group: _Group) -> None:
        """Start the group's reader, or make it re-issue its XREAD with the new stream now."""
        if group.reader is None or group.reader.done():
            group.reader = asyncio.create_task(self._run(group), name="streaming-rag-fanout")
        elif group.blocked and group.conn_id is not None:
            task = asyncio.create_task(self._unblock(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _unblock(self, group: _Group) -> None:
        conn_id = group.conn_id
        if conn_id is None:
            return
        with contextlib.suppress(Exception):
            if group.node is not None:  # a cluster: the node the reader is blocked on
                await self._t.events.execute_command(
                    "CLIENT UNBLOCK", conn_id, target_nodes=group.node
                )
            else:
                await self._t.events.client_unblock(conn_id)

    async def aclose(self) -> None:
        """Stop the readers (subscribers still iterating read on their own). A cancellation
        of the caller while it waits for them is raised, not swallowed."""
        readers = []
        for group in list(self._groups.values()):
            reader, group.reader = group.reader, None
            if reader is not None and not reader.done():
                reader.cancel()
                readers.append(reader)
        if readers:  # their own CancelledErrors are results here; the caller's propagates
            await asyncio.gather(*readers, return_exceptions=True)
        await self.presence.aclose()  # and this fan-out's watchers are deleted

    # -- the reader -----------------------------------------------------------------------------
    async def _run(self, group: _Group) -> None:
        loop = asyncio.get_running_loop()
        block_ms = max(1, int(self._poll_s * 1000))
        try:
            while group.watched:
                response = await self._t.call(lambda: self._read(group, block_ms))
                now = loop.time()
                pairs = response.items() if isinstance(response, dict) else response or ()
                for stream, entries in pairs:
                    self._deliver(group, text(stream), entries, now)
                await self._check_idle(group, now)
        except _Unwatched:
            pass
        except ServerUnavailable as exc:  # down for reconnect_s: every subscriber raises it
            for watched in group.watched.values():
                watched.post(_Raise(exc))
            group.watched.clear()
        except Exception as exc:  # anything else: every subscriber catches up alone
            logger.warning("fan-out reader stopped (%s); subscribers read on their own", exc)
            for watched in group.watched.values():
                watched.post(_OVERFLOW)
            group.watched.clear()
        finally:
            await self._disconnect(group)
            if group.watched:  # someone joined while this reader was leaving: start another
                group.reader = asyncio.create_task(self._run(group), name="streaming-rag-fanout")
            elif self._groups.get(group.bucket) is group:
                del self._groups[group.bucket]

    async def _disconnect(self, group: _Group) -> None:
        conn, group.conn, group.conn_id, group.node = group.conn, None, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.aclose()

    async def _connect(self, group: _Group) -> Any:
        """The group's own connection: to the server, or on a cluster to the node that owns
        the group's slot now."""
        if not self._t.cluster:
            return raw_view(self._t.events, single_connection=True)
        cluster = self._t.events
        await cluster.initialize()  # a no-op unless a MOVED asked for a fresh slot map
        node = None
        if group.asking is not None:  # the slot is migrating: read where its keys went
            node = cluster.get_node(host=group.asking[0], port=group.asking[1])
        group.node = node or cluster.get_node_from_key(next(iter(group.watched)))
        return node_reader(cluster, group.node)

    async def _read(self, group: _Group, block_ms: int) -> Any:
        """One blocking XREAD of the group's streams from the reader's cursors (`_Unwatched`
        when nobody watches any more, e.g. every subscriber left during an outage). After a
        (re)connect it first learns the connection's id, for CLIENT UNBLOCK; any failure
        forgets it, as the next attempt may reconnect (on a cluster, to the slot's new
        owner)."""
        if not group.watched:
            raise _Unwatched
        if group.conn is None:
            group.conn = await self._connect(group)
        conn = group.conn
        try:
            if group.conn_id is None:
                group.conn_id = int(await conn.client_id())
            streams = {name: w.follower.cursor for name, w in group.watched.items()}
            if group.asking is not None:  # valid for the next command only: the XREAD
                await conn.execute_command("ASKING")
            group.blocked = True
            try:
                connection = conn.connection  # the reader's own, held since CLIENT ID
                if connection is None:
                    return await conn.xread(streams, count=READ_COUNT, block=block_ms)
                # written and read directly: redis-py's per-command machinery costs as much
                # client CPU as the call, once per XREAD (see `xread_command`)
                command = xread_command(streams, READ_COUNT, block_ms)
                await connection.send_packed_command(command, check_health=False)
                return await connection.read_response()
            finally:
                group.blocked = False
        except BaseException as exc:
            group.conn_id = None
            if self._t.cluster:
                await self._disconnect(group)
                if isinstance(exc, redis.exceptions.MovedError):  # the slot has a new owner
                    group.asking = None
                    with contextlib.suppress(Exception):
                        await self._t.events.nodes_manager.initialize()
                elif isinstance(exc, redis.exceptions.AskError):  # being migrated: follow it
                    group.asking = exc.node_addr
            elif isinstance(exc, redis.exceptions.ResponseError) and conn.connection is not None:
                await conn.connection.disconnect()  # e.g. UNBLOCKED: reconnect to the primary
            raise

    def _deliver(self, group: _Group, stream: str, entries: list[Any], now: float) -> None:
        watched = group.watched.get(stream)
        if watched is None or not entries:
            return
        follower = watched.follower
        watched.last_seen = now
        try:
            events: list[Any] = decode_entries(follower.job_id, entries)
        except Exception:  # a corrupt entry: decode one by one, hand its error on
            events = []
            for entry_id, fields in entries:
                try:
                    events.append(decode_raw_entry(follower.job_id, entry_id, fields))
                except Exception as exc:  # raised in each subscriber's iteration
                    events.append(_Raise(exc))
        for event in events:
            if type(event) is not _Raise:
                follower.advance(event)
        watched.append(events)  # one batch, one wake-up of the subscribers waiting
        if not watched.subs:  # every subscriber fell behind: each catches up by itself
            del group.watched[stream]

    async def _check_idle(self, group: _Group, now: float) -> None:
        idle = [w for w in group.watched.values() if now - w.last_seen >= self._poll_s]
        if not idle:
            return
        verdicts = await self._t.check_many([w.follower.keys for w in idle])
        for watched, verdict in zip(idle, verdicts, strict=True):
            watched.last_seen = now
            try:
                watched.follower.on_idle(verdict)
            except JobNotFound as exc:
                watched.post(_Raise(exc))
