"""The state the fan-out (`_fanout.Fanout`) keeps: each watched stream's shared log (the decoded
events its reader appended, read by every subscriber at its own index), the reader's cursor for
it and its subscribers, and each reader group (one per server, or one per watched bucket on a
cluster).

The log of one stream is a list with a base index: entry `i` of the stream's log (counted from
when the stream was first watched) is `log[i - base]`. The reader appends a batch (one XREAD
page) and then completes the stream's one waiter future, which every subscriber with nothing
left to read awaits together: one wake-up per batch per waiting subscriber, none for a
subscriber still busy with unread entries. The log is trimmed to the slowest attached
subscriber once it holds `TRIM_AT` entries; a subscriber more than `limit` entries behind the
end is dropped then (its index falls below `base`: it catches up from its own cursor).
"""

from __future__ import annotations

import asyncio
from typing import Any

from streaming_rag import EventType
from streaming_rag.wire import JobKeys

from ._core import Follower

__all__ = ["_CHUNK", "_OVERFLOW", "_Group", "_Raise", "_Subscriber", "_Unwatched", "_Watched"]

_CHUNK = EventType.CHUNK
#: How many entries a log holds before it is trimmed to its slowest subscriber (or `limit`).
TRIM_AT = 256


class _Raise:
    """A log entry that is not an event: `exc` is raised in every subscriber reaching it, or,
    for `_OVERFLOW` (exc None), the subscriber leaves the fan-out and catches up by itself."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException | None) -> None:
        self.exc = exc


_OVERFLOW = _Raise(None)


class _Unwatched(Exception):
    """Nobody watches a stream any more: the reader stops (also between retries)."""


class _Subscriber:
    """One follower's place in its stream's log: the index of the next entry it reads. An
    index below the log's base means it was dropped (it fell more than `limit` behind)."""

    __slots__ = ("pos", "watched")

    def __init__(self, watched: _Watched, pos: int) -> None:
        self.watched = watched
        self.pos = pos


class _Watched:
    """One stream the reader follows: its `Follower` (the reader's cursor), its shared log, its
    subscribers, the future they wait on, and when the reader last saw an entry (for the
    liveness CHECK)."""

    __slots__ = (
        "base",
        "follower",
        "keys",
        "last_seen",
        "limit",
        "log",
        "marks",
        "page",
        "subs",
        "waiter",
    )

    def __init__(self, keys: JobKeys, cursor: str, now: float, limit: int) -> None:
        self.keys = keys
        self.follower = Follower(keys, cursor=cursor)
        self.subs: set[_Subscriber] = set()
        self.last_seen = now
        self.limit = max(1, limit)
        self.log: list[Any] = []
        self.base = 0
        #: the indices of the log's entries that are not chunks (lifecycle events, the terminal
        #: one, `_Raise` entries), ascending: page readers cut their pages there
        self.marks: list[int] = []
        #: the last page handed out, `(start, stop, events)`: shared by the readers at `start`
        self.page: tuple[int, int, list[Any]] | None = None
        self.waiter: asyncio.Future[None] | None = None

    @property
    def end(self) -> int:
        """The index the next appended entry gets."""
        return self.base + len(self.log)

    def join(self) -> _Subscriber:
        """A new subscriber reading from the end of the log (what the reader reads next)."""
        sub = _Subscriber(self, self.base + len(self.log))
        self.subs.add(sub)
        return sub

    def waiting(self) -> asyncio.Future[None]:
        """The future a subscriber with nothing left to read awaits (shared by all of them;
        one that a subscriber's cancellation cancelled is replaced)."""
        waiter = self.waiter
        if waiter is None or waiter.done():
            waiter = self.waiter = asyncio.get_running_loop().create_future()
        return waiter

    def wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def append(self, items: list[Any]) -> None:
        """Append a batch (events, `_Raise` entries), trim, and wake the waiting subscribers
        once."""
        log = self.log
        end = self.base + len(log)
        for k, item in enumerate(items):
            if type(item) is _Raise or item.type is not _CHUNK:
                self.marks.append(end + k)
        log += items
        if len(log) >= TRIM_AT or len(log) > self.limit:
            self.trim()
        self.wake()

    def post(self, item: _Raise) -> None:
        """Append one marker (an error, or `_OVERFLOW`) for every subscriber, never trimmed
        away from under them."""
        self.marks.append(self.base + len(self.log))
        self.log.append(item)
        self.wake()

    def trim(self) -> None:
        """Drop the entries every subscriber has read; first drop from the fan-out every
        subscriber more than `limit` entries behind the end (they catch up by themselves)."""
        end = self.base + len(self.log)
        subs = self.subs
        low = min((s.pos for s in subs), default=end)
        if end - low > self.limit:
            floor = end - self.limit
            for sub in [s for s in subs if s.pos < floor]:
                subs.discard(sub)
            low = min((s.pos for s in subs), default=end)
        if low > self.base:
            del self.log[: low - self.base]
            self.base = low
            marks = self.marks
            if marks and marks[0] < low:
                self.marks = [m for m in marks if m >= low]


class _Group:
    """One shared reader: the streams it follows (every watched stream on a single server; one
    bucket's on a cluster), its task, its connection and that connection's CLIENT ID."""

    __slots__ = ("asking", "blocked", "bucket", "conn", "conn_id", "node", "reader", "watched")

    def __init__(self, bucket: int | None) -> None:
        self.bucket = bucket
        self.watched: dict[str, _Watched] = {}
        self.reader: asyncio.Task[None] | None = None
        self.conn: Any = None
        self.conn_id: int | None = None
        self.node: Any = None  # the cluster node `conn` is connected to
        self.asking: tuple[str, int] | None = None  # the slot's migration target, after ASK
        self.blocked = False
