"""The two thin I/O twins: the same operations on redis-py's sync and asyncio clients.

Each method is one round trip (or one blocking read), ridden through Redis outages: on a
connection error (refused, reset, timed out, or a restarted server still loading its data:
`RETRYABLE`), or an error reply a server gives while it changes role (`TRANSIENT_REPLIES`, e.g.
``UNBLOCKED`` for a blocked read of a primary being demoted), the call is tried again,
waiting as `streaming_rag.wire.backoff.Backoff` says (the one retry policy of worker and
client: 50 ms doubling to 1 s, ±20 % jitter), for up to `reconnect_s` seconds from its first
failure; then it raises `ServerUnavailable` naming the URL
(password masked) and how long it was unreachable. Raised at once instead: authentication
errors (`ServerUnavailable`), a server that does not speak the protocol (`ServerUnavailable`),
a database number the server does not have (`InvalidRequest`); any other error reply as is.
Each transport logs an outage once at WARNING when it starts and once at INFO when a call
succeeds again (logger ``streaming_rag.client``).

Every operation here may be retried blindly: reads and CHECK are idempotent, CANCEL reports
whether a retry found the job cancelled (an earlier attempt did it), and SUBMIT carries a
per-submit nonce, so a retry after a lost reply answers 1 again instead of running twice or
reporting a duplicate. (Without the nonce only failures before the command was sent would be
safe to retry, and redis-py cannot tell those apart reliably: a single-connection client
connects inside `send_packed_command`, and a pooled connection the server has just closed
fails only on the read after the write.)

Two places: `client` is the queue server's client, `events` the events server's (the same
client unless `events_url` names another server, e.g. a Redis Cluster). With one server, a
submit, a CHECK and a CANCEL are each one atomic script over both; apart, each is its job-side
script on the events server, then its queue-side half (ENQUEUE after a SUBMIT that created the
job; DEQUEUE after a CHECK or CANCEL that ended it, and the cancel PUBLISH), in that order
(docs/wire-format.md says why each order is safe). An outage names the server it hit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio

from streaming_rag.wire import JobKeys
from streaming_rag.wire.presence import watch_call, watchers_call
from streaming_rag.wire.scripts import (
    dequeue_call,
)

from ._core import SubmitPlan, text
from ._outages import (
    DEFAULT_RECONNECT_S,
    READ_COUNT,
    RETRYABLE,
    TRANSIENT_REPLIES,
    raw_view,
    raw_xrange,
    redacted,
)
from ._twin import ENDED, _Twin, cleanup_failed

__all__ = [
    "READ_COUNT",
    "RETRYABLE",
    "TRANSIENT_REPLIES",
    "AsyncTransport",
    "SyncTransport",
    "raw_view",
    "redacted",
]

logger = logging.getLogger("streaming_rag.client")
_T = TypeVar("_T")


class SyncTransport(_Twin):
    """Job operations on redis-py's sync clients, each retried through outages of up to
    `reconnect_s` seconds (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        retention_ms: int,
        *,
        reconnect_s: float = DEFAULT_RECONNECT_S,
        events: Any = None,
        events_url: str | None = None,
    ) -> None:
        super().__init__(
            client,
            url,
            retention_ms,
            reconnect_s=reconnect_s,
            events=events,
            events_url=events_url,
        )

    def call(self, op: Callable[[], _T], *, queue: bool = False) -> _T:
        """`op()` on the events server (`queue`: the queue server), tried again after each
        outage error (`Outages.failed`; waiting as `Backoff` says) until it answers or has
        failed for `reconnect_s`; then `ServerUnavailable`."""
        outages = self.outages if queue else self.event_outages
        backoff = None
        while True:
            try:
                result = op()
            except (
                redis.exceptions.RedisError,
                redis.exceptions.RedisClusterException,
                OSError,
            ) as exc:
                backoff = outages.failed(backoff, exc)
                time.sleep(outages.wait_s(backoff))  # a policy's wait, not a synchronisation
                continue
            outages.succeeded()
            return result

    def submit(self, plan: SubmitPlan) -> bool:
        """SUBMIT (idempotent per plan: a retry after a lost reply answers True again), then,
        with the events apart, ENQUEUE."""
        call = self._submit_call(plan)
        ok = bool(self.call(lambda: self._submit(keys=call.keys, args=call.args)))
        if ok and self.split:
            e = plan.enqueue
            self.call(lambda: self._enqueue(keys=e.keys, args=e.args), queue=True)
        return ok

    def read(
        self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = READ_COUNT
    ) -> Any:
        """Raw XREAD reply of at most `count` entries (see `raw_view`)."""
        return self._xread(
            self.call(lambda: self.raw.xread({keys.events: cursor}, count=count, block=block_ms))
        )

    def _queue_side(self, keys: JobKeys, verdict: str, *, publish: bool = False) -> None:
        """The queue half of a CHECK or CANCEL that ran on the events server alone."""
        try:
            if verdict in ENDED:
                c = dequeue_call(keys)
                self.call(lambda: self._dequeue(keys=c.keys, args=c.args), queue=True)
            elif publish and verdict == "requested":
                self.call(lambda: self.client.publish(keys.cancel_channel, keys.job_id), queue=True)
        except Exception as exc:  # best effort: see CHECK and CANCEL
            cleanup_failed(keys, exc)

    def check(self, keys: JobKeys) -> str:
        call = self._check_call(keys)
        verdict = text(self.call(lambda: self._check(keys=call.keys, args=call.args)))
        if self.split:
            self._queue_side(keys, verdict)
        return verdict

    def cancel(self, keys: JobKeys) -> tuple[str, bool]:
        """The CANCEL verdict, and whether it took more than one attempt."""
        call = self._cancel_call(keys)
        attempts = 0

        def once() -> Any:
            nonlocal attempts
            attempts += 1
            return self._cancel(keys=call.keys, args=call.args)

        verdict = text(self.call(once))
        if self.split:
            self._queue_side(keys, verdict, publish=True)
        return verdict, attempts > 1

    def watch(
        self, keys: JobKeys, watchers: list[tuple[str, int]], ttl_ms: int, *, retry: bool = True
    ) -> None:
        """WATCH (`streaming_rag.wire.presence`): the watchers follow the job for `ttl_ms`
        more (count 0: stopped). `retry=False`: one attempt, its errors raised."""
        c = watch_call(keys, watchers, ttl_ms=ttl_ms)
        if retry:
            self.call(lambda: self._watch(keys=c.keys, args=c.args))
        else:
            self._watch(keys=c.keys, args=c.args)

    def watchers(self, keys: JobKeys) -> int:
        """How many follow the job now (WATCHERS)."""
        c = watchers_call(keys)
        return int(self.call(lambda: self._watchers(keys=c.keys, args=c.args)))

    def close(self, *, queue: bool = True, events: bool = True) -> None:
        """Close the queue client and (when apart) the events client, as asked."""
        if queue:
            self.client.close()
        if events and self.split:
            self.events.close()


class AsyncTransport(_Twin):
    """Job operations on redis-py's asyncio clients, each retried through outages of up to
    `reconnect_s` seconds (see the module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        url: str,
        retention_ms: int,
        *,
        reconnect_s: float = DEFAULT_RECONNECT_S,
        events: Any = None,
        events_url: str | None = None,
    ) -> None:
        super().__init__(
            client,
            url,
            retention_ms,
            reconnect_s=reconnect_s,
            events=events,
            events_url=events_url,
        )

    async def call(self, op: Callable[[], Awaitable[_T]], *, queue: bool = False) -> _T:
        """`await op()` on the events server (`queue`: the queue server), tried again after
        each outage error (`Outages.failed`; waiting as `Backoff` says) until it answers or
        has failed for `reconnect_s`; then `ServerUnavailable`. The fan-out reader runs its
        own XREAD through it too."""
        outages = self.outages if queue else self.event_outages
        backoff = None
        while True:
            try:
                result = await op()
            except (
                redis.exceptions.RedisError,
                redis.exceptions.RedisClusterException,
                OSError,
            ) as exc:
                backoff = outages.failed(backoff, exc)
                await asyncio.sleep(outages.wait_s(backoff))  # a policy's wait
                continue
            outages.succeeded()
            return result

    async def submit(self, plan: SubmitPlan) -> bool:
        """SUBMIT (idempotent per plan: a retry after a lost reply answers True again), then,
        with the events apart, ENQUEUE."""
        call = self._submit_call(plan)
        ok = bool(await self.call(lambda: self._submit(keys=call.keys, args=call.args)))
        if ok and self.split:
            e = plan.enqueue
            await self.call(lambda: self._enqueue(keys=e.keys, args=e.args), queue=True)
        return ok

    async def read(
        self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = READ_COUNT
    ) -> Any:
        """Raw XREAD reply of at most `count` entries (see `raw_view`)."""
        return self._xread(
            await self.call(
                lambda: self.raw.xread({keys.events: cursor}, count=count, block=block_ms)
            )
        )

    async def range_after(self, keys: JobKeys, after: str, last: str) -> Any:
        """Raw XRANGE entries in (after, last]."""
        reply = await self.call(lambda: self.raw.xrange(keys.events, f"({after}", last))
        return raw_xrange(reply) if self.cluster else reply

    async def _queue_side(self, keys: JobKeys, verdict: str, *, publish: bool = False) -> None:
        """The queue half of a CHECK or CANCEL that ran on the events server alone."""
        try:
            if verdict in ENDED:
                c = dequeue_call(keys)
                await self.call(lambda: self._dequeue(keys=c.keys, args=c.args), queue=True)
            elif publish and verdict == "requested":
                await self.call(
                    lambda: self.client.publish(keys.cancel_channel, keys.job_id), queue=True
                )
        except Exception as exc:  # best effort: see CHECK and CANCEL
            cleanup_failed(keys, exc)

    async def check(self, keys: JobKeys) -> str:
        call = self._check_call(keys)
        verdict = text(await self.call(lambda: self._check(keys=call.keys, args=call.args)))
        if self.split:
            await self._queue_side(keys, verdict)
        return verdict

    async def check_many(self, many: list[JobKeys]) -> list[str]:
        """CHECK for several jobs: one round trip on a single server, concurrent calls (one
        per job's slot) on a cluster."""
        calls = [self._check_call(keys) for keys in many]

        async def once() -> list[Any]:
            if self.cluster:
                return list(
                    await asyncio.gather(*(self._check(keys=c.keys, args=c.args) for c in calls))
                )
            async with self.events.pipeline(transaction=False) as pipe:
                for c in calls:
                    await self._check(keys=c.keys, args=c.args, client=pipe)
                return list(await pipe.execute())

        verdicts = [text(v) for v in await self.call(once)]
        if self.split:
            for keys, verdict in zip(many, verdicts, strict=True):
                if verdict in ENDED:
                    await self._queue_side(keys, verdict)
        return verdicts

    async def cancel(self, keys: JobKeys) -> tuple[str, bool]:
        """The CANCEL verdict, and whether it took more than one attempt."""
        call = self._cancel_call(keys)
        attempts = 0

        async def once() -> Any:
            nonlocal attempts
            attempts += 1
            return await self._cancel(keys=call.keys, args=call.args)

        verdict = text(await self.call(once))
        if self.split:
            await self._queue_side(keys, verdict, publish=True)
        return verdict, attempts > 1

    async def watch(
        self, keys: JobKeys, watchers: list[tuple[str, int]], ttl_ms: int, *, retry: bool = True
    ) -> None:
        """Async `SyncTransport.watch`."""
        c = watch_call(keys, watchers, ttl_ms=ttl_ms)
        if retry:
            await self.call(lambda: self._watch(keys=c.keys, args=c.args))
        else:
            await self._watch(keys=c.keys, args=c.args)

    async def watch_many(
        self, many: list[tuple[JobKeys, list[tuple[str, int]]]], ttl_ms: int
    ) -> None:
        """WATCH for several jobs: one round trip on a single server, concurrent calls (one
        per job's slot) on a cluster; one attempt, its errors raised (the next refresh
        retries)."""
        calls = [watch_call(keys, watchers, ttl_ms=ttl_ms) for keys, watchers in many]
        if self.cluster:
            await asyncio.gather(*(self._watch(keys=c.keys, args=c.args) for c in calls))
            return
        async with self.events.pipeline(transaction=False) as pipe:
            for c in calls:
                await self._watch(keys=c.keys, args=c.args, client=pipe)
            await pipe.execute()

    async def watchers(self, keys: JobKeys) -> int:
        """Async `SyncTransport.watchers`."""
        c = watchers_call(keys)
        return int(await self.call(lambda: self._watchers(keys=c.keys, args=c.args)))

    async def aclose(self, *, queue: bool = True, events: bool = True) -> None:
        """Close the queue client and (when apart) the events client, as asked."""
        if queue:
            await self.client.aclose()
        if events and self.split:
            with contextlib.suppress(Exception):
                await self.events.aclose()
