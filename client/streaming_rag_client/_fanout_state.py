"""The state the fan-out (`_fanout.Fanout`) keeps: each subscriber's bounded buffer, each watched
stream's reader cursor and subscribers, and each reader group (one per server, or one per
watched bucket on a cluster)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from streaming_rag import EventType
from streaming_rag.wire import JobKeys

from ._core import Follower

__all__ = ["_CHUNK", "_OVERFLOW", "_Group", "_Raise", "_Subscriber", "_Unwatched", "_Watched"]

_OVERFLOW = object()
_CHUNK = EventType.CHUNK


class _Raise:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Unwatched(Exception):
    """Nobody watches a stream any more: the reader stops (also between retries)."""


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


class _Watched:
    """One stream the reader follows: its `Follower` (the reader's cursor), its subscribers,
    and when it last saw an entry (for the liveness CHECK)."""

    __slots__ = ("follower", "last_seen", "subs")

    def __init__(self, keys: JobKeys, cursor: str, now: float) -> None:
        self.follower = Follower(keys, cursor=cursor)
        self.subs: set[_Subscriber] = set()
        self.last_seen = now


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
