"""`StreamingRAGClient`: the spec's surface, answered by workers through Redis Streams."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Generator
from contextlib import aclosing
from dataclasses import replace
from typing import Any, Literal, overload

import redis
import redis.asyncio

from streaming_rag import EventType, StreamEvent
from streaming_rag.exceptions import DuplicateJob, InvalidRequest, JobNotFound
from streaming_rag.stats import StreamStats
from streaming_rag.wire import (
    DEFAULT_MAX_QUERY_CHARS,
    DEFAULT_PREFIX,
    JobKeys,
    parse_url,
    redact_url,
    validate_job_id,
    validate_prefix,
)
from streaming_rag.wire.ids import validate_cursor
from streaming_rag.wire.keys import DEFAULT_REDIS_URL

from . import tracing
from ._connect import async_client, sync_client
from ._core import (
    USAGE_FIELDS,
    Follower,
    JobDetails,
    JobStatus,
    SubmitPlan,
    cancel_succeeded,
    check_speed,
    details_from_fields,
    flatten,
    plan_submit,
    replay_delay,
    status_from_check,
)
from ._fanout import Fanout
from ._outages import is_cluster
from ._presence import awatched_follow, watched_follow
from ._transport import AsyncTransport, SyncTransport

__all__ = ["DEFAULT_REDIS_URL", "EVENTS_URL_ENV", "PREFIX_ENV", "StreamingRAGClient"]

#: The variable naming the key prefix when `prefix` is not given (as for the worker and CLI).
PREFIX_ENV = "STREAMING_RAG_PREFIX"
#: The variable naming the events server when `events_url` is not given.
EVENTS_URL_ENV = "STREAMING_RAG_EVENTS_URL"


class StreamingRAGClient:
    """Submit questions to streaming-rag workers and follow their answers as `StreamEvent`s.

    `stream`, `stream_events`, `query`, `astream`, `astream_events`, `stats` and `repr` behave
    as the in-process `StreamingRAG`'s, but each call submits a job and follows its stream from
    the first entry, so nothing is lost however fast the worker is. Events carry `id`, the
    stream entry id, usable as `after=` to resume.

    Sync methods use redis-py's sync client, async methods (prefixed `a`) its asyncio client;
    both are created on first use from `redis_url` (default: `REDIS_URL`, else
    `redis://127.0.0.1:6379/0`; the key `prefix` likewise defaults to `STREAMING_RAG_PREFIX`,
    else `srag`, as for the worker and the CLI), or passed ready-made as `sync_client` /
    `async_client`. The URL is parsed here (`streaming_rag.wire.parse_url`: redis://, rediss://, unix://,
    redis+sentinel://, rediss+sentinel://; a bad one raises `InvalidRequest`); a sentinel URL
    gives clients that follow the primary through failovers. `repr()` and every error message
    show the URL with its passwords masked.

    Two places: `redis_url` is the queue server (standalone or Sentinel); `events_url`
    (default: `STREAMING_RAG_EVENTS_URL`, else the queue server) is where the per-job keys
    live, and may be a Redis Cluster (``redis+cluster://host:port[,host:port...]``). Give the
    workers the same two URLs. Ready-made clients of the events server go in
    `sync_events_client` / `async_events_client` (a `redis.cluster.RedisCluster` /
    `redis.asyncio.cluster.RedisCluster` for a cluster); a cluster client given as
    `sync_client` / `async_client` raises `InvalidRequest` (the queue cannot live on one).

    Async subscribers of one client share one reader connection (`fanout=True`): one XREAD
    follows every watched stream into a shared log per stream that every subscriber reads at
    its own index (a subscriber more than `fanout_buffer` events behind reads on its own until
    it has caught up, so nothing is lost). `fanout=False` gives each async subscriber its own
    blocking reads.

    Nobody waits forever: while a stream is quiet the client checks, every `poll_interval_s`,
    whether the job is still queued within `start_timeout` seconds and whether its worker's
    lease is alive; a dead worker or an unclaimed job ends the stream with an ERROR event
    (stage `worker` or `queue`) that is appended to the stream for every other subscriber too.

    Redis outages are ridden through: every call (a submit, each read of a stream, a cancel, a
    status check, the fan-out's shared reader) that meets a connection error tries again, with
    backoff (50 ms doubling to 1 s, with jitter), for up to `reconnect_s` seconds (default 30,
    must be > 0), from the same cursor, so subscribers see every event exactly once across a
    server restart; only then does it raise `ServerUnavailable`.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        *,
        prefix: str | None = None,
        start_timeout: float = 30.0,
        max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
        retention_s: float = 3600.0,
        poll_interval_s: float = 1.0,
        reconnect_s: float = 30.0,
        fanout: bool = True,
        fanout_buffer: int = 10_000,
        sync_client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        events_url: str | None = None,
        sync_events_client: Any = None,
        async_events_client: Any = None,
    ) -> None:
        self.url = redis_url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
        self._server = parse_url(self.url)
        if self._server.kind == "cluster" or is_cluster(sync_client) or is_cluster(async_client):
            raise InvalidRequest(
                "the queue cannot live on a Redis Cluster (arq cannot run on one): give the "
                "cluster as events_url= (or sync_events_client= / async_events_client=) and a "
                "standalone or Sentinel server as redis_url"
            )
        events = events_url or os.environ.get(EVENTS_URL_ENV) or None
        self.events_url = None if events == self.url else events
        self._events_server = None if self.events_url is None else parse_url(self.events_url)
        self.prefix = validate_prefix(prefix or os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)
        if not start_timeout > 0:
            raise InvalidRequest(f"start_timeout must be > 0 seconds, got {start_timeout}")
        if not poll_interval_s > 0:
            raise InvalidRequest(f"poll_interval_s must be > 0 seconds, got {poll_interval_s}")
        if not reconnect_s > 0:
            raise InvalidRequest(f"reconnect_s must be > 0 seconds, got {reconnect_s}")
        self.start_timeout = float(start_timeout)
        self.max_query_chars = max_query_chars
        self.retention_s = float(retention_s)
        self.poll_interval_s = float(poll_interval_s)
        self.reconnect_s = float(reconnect_s)
        self._sync_client = sync_client
        self._async_client = async_client
        self._owns_sync = sync_client is None
        self._owns_async = async_client is None
        self._sync_events_client = sync_events_client
        self._async_events_client = async_events_client
        self._sync: SyncTransport | None = None
        self._async: AsyncTransport | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self.fanout = fanout
        self.fanout_buffer = fanout_buffer
        self._fanout: Fanout | None = None
        self._stats = StreamStats()

    def __repr__(self) -> str:
        events = "" if self.events_url is None else f", events_url={redact_url(self.events_url)!r}"
        return f"StreamingRAGClient(url={redact_url(self.url)!r}{events}, prefix={self.prefix!r})"

    @property
    def stats(self) -> dict[str, Any]:
        """The spec's stats keys, over the streams this client consumed."""
        return self._stats.snapshot()

    # -- transports ---------------------------------------------------------------------------
    @property
    def _block_ms(self) -> int:
        return max(1, int(self.poll_interval_s * 1000))

    def _sync_transport(self) -> SyncTransport:
        if self._sync is None:
            client = self._sync_client or sync_client(self._server)
            events = self._sync_events_client
            if events is None and self._events_server is not None:
                events = sync_client(self._events_server)
            self._sync = SyncTransport(
                client,
                self.url,
                int(self.retention_s * 1000),
                reconnect_s=self.reconnect_s,
                events=events,
                events_url=self.events_url,
            )
        return self._sync

    def _async_transport(self) -> AsyncTransport:
        loop = asyncio.get_running_loop()
        if self._async is None or (self._owns_async and self._async_loop is not loop):
            client = self._async_client or async_client(self._server)
            events = self._async_events_client
            if events is None and self._events_server is not None:
                events = async_client(self._events_server)
            self._async = AsyncTransport(
                client,
                self.url,
                int(self.retention_s * 1000),
                reconnect_s=self.reconnect_s,
                events=events,
                events_url=self.events_url,
            )
            self._async_loop = loop
            self._fanout = Fanout(
                self._async, poll_interval_s=self.poll_interval_s, buffer_size=self.fanout_buffer
            )
        return self._async

    def _plan(self, query: Any, context: Any, job_id: str | None) -> SubmitPlan:
        return plan_submit(
            query,
            context,
            job_id=job_id,
            prefix=self.prefix,
            max_query_chars=self.max_query_chars,
            start_timeout_s=self.start_timeout,
            retention_s=self.retention_s,
            trace=tracing.carrier(),
        )

    def _keys(self, job_id: str) -> JobKeys:
        return JobKeys(self.prefix, validate_job_id(job_id))

    # -- sync surface -------------------------------------------------------------------------
    def submit(
        self, query: str, context: dict[str, Any] | None = None, *, job_id: str | None = None
    ) -> str:
        """Queue a question; return its job id. Raises `InvalidRequest` (nothing queued) or
        `DuplicateJob` when `job_id` is already in use."""
        plan = self._plan(query, context, job_id)
        if not self._sync_transport().submit(plan):
            raise DuplicateJob(plan.job_id)
        return plan.job_id

    def _follow(self, keys: JobKeys, after: str | None) -> Generator[StreamEvent, None, None]:
        f = Follower(keys, cursor=after or "0-0")
        t, poll_s = self._sync_transport(), self.poll_interval_s
        return flatten(
            watched_follow(t, f, block_ms=self._block_ms, stats=self._stats, poll_interval_s=poll_s)
        )

    def events(self, job_id: str, after: str | None = None) -> Generator[StreamEvent, None, None]:
        """Every event of a job, running or finished, from the start or after entry `after`,
        each exactly once, ending after the terminal event. Raises `JobNotFound`, or
        `InvalidRequest` for an `after` that is not an entry id."""
        keys = self._keys(job_id)
        if after is not None:
            validate_cursor(after)
        if self._sync_transport().check(keys) == "missing":
            raise JobNotFound(job_id, self.prefix)
        yield from self._follow(keys, after)

    def replay(self, job_id: str, speed: float = 0.0) -> Generator[StreamEvent, None, None]:
        """A job's trace re-emitted with its original pacing divided by `speed` (2.0 = twice as
        fast); `speed=0` emits it at once. Raises `InvalidRequest` for a speed that is not a
        finite number >= 0."""
        speed = check_speed(speed)
        started = time.monotonic()
        for event in self.events(job_id):
            delay = replay_delay(event, started, time.monotonic(), speed)
            if delay > 0:
                time.sleep(delay)
            yield event

    def stream_events(
        self, query: str, context: dict[str, Any] | None = None
    ) -> Generator[StreamEvent, None, None]:
        """Submit `query` and yield every event of its answer (the spec's `stream_events`)."""
        job_id = self.submit(query, context)
        yield from self._follow(self._keys(job_id), None)

    def stream(
        self, query: str, context: dict[str, Any] | None = None
    ) -> Generator[str, None, None]:
        """Submit `query` and yield the answer's chunk texts only."""
        for event in self.stream_events(query, context):
            if event.type is EventType.CHUNK:
                yield event.data

    def query(self, query: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Submit `query`, wait for the end; `{"answer": str, "events": list[StreamEvent]}`."""
        events = list(self.stream_events(query, context))
        return {"answer": "".join(str(e) for e in events), "events": events}

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: a queued one ends at once, a running one's worker stops it promptly;
        both end with ERROR {"stage": "generation", "msg": "Cancelled"}. False if the job had
        already finished. Raises `JobNotFound`."""
        verdict, retried = self._sync_transport().cancel(self._keys(job_id))
        if verdict == "missing":
            raise JobNotFound(job_id, self.prefix)
        return cancel_succeeded(verdict, retried=retried)

    @overload
    def status(self, job_id: str, *, details: Literal[False] = False) -> JobStatus: ...
    @overload
    def status(self, job_id: str, *, details: Literal[True]) -> JobDetails: ...
    def status(self, job_id: str, *, details: bool = False) -> JobStatus | JobDetails:
        """queued, running, done, failed, cancelled or not found (also settles a job whose
        worker died or that no worker picked up in time). With ``details=True``, a
        `JobDetails`: the status plus the token usage, model and finish reason its worker
        recorded as the job ended (None where absent), and `watchers`: how many subscribers
        follow it now (this call does not count)."""
        t = self._sync_transport()
        keys = self._keys(job_id)
        status = status_from_check(t.check(keys))
        if not details:
            return status
        if status is JobStatus.NOT_FOUND:
            return JobDetails(status)
        found = details_from_fields(status, t.call(lambda: t.events.hmget(keys.meta, USAGE_FIELDS)))
        return replace(found, watchers=t.watchers(keys))

    def close(self) -> None:
        """Close the sync connection pool (if this client created it)."""
        if self._sync is not None:
            self._sync.close(queue=self._owns_sync, events=self._sync_events_client is None)
        self._sync = None

    def __enter__(self) -> StreamingRAGClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- async surface ------------------------------------------------------------------------
    async def asubmit(
        self, query: str, context: dict[str, Any] | None = None, *, job_id: str | None = None
    ) -> str:
        """Async `submit`."""
        plan = self._plan(query, context, job_id)
        if not await self._async_transport().submit(plan):
            raise DuplicateJob(plan.job_id)
        return plan.job_id

    def _afollow(
        self, keys: JobKeys, after: str | None, *, known: bool = True, fresh: bool = False
    ) -> AsyncGenerator[StreamEvent, None]:
        transport = self._async_transport()
        if self.fanout:
            assert self._fanout is not None
            return self._fanout.follow(keys, after or "0-0", self._stats, known=known, fresh=fresh)
        return self._afollow_alone(transport, keys, after, known)

    async def _afollow_alone(
        self, t: AsyncTransport, keys: JobKeys, after: str | None, known: bool
    ) -> AsyncGenerator[StreamEvent, None]:
        """Follow with this subscriber's own blocking reads (`fanout=False`)."""
        if not known and await t.check(keys) == "missing":
            raise JobNotFound(keys.job_id, keys.prefix)
        f = Follower(keys, cursor=after or "0-0")
        events = awatched_follow(
            t, f, block_ms=self._block_ms, stats=self._stats, poll_interval_s=self.poll_interval_s
        )
        async with aclosing(events) as events:
            async for event in events:
                yield event

    def aevents(self, job_id: str, after: str | None = None) -> AsyncGenerator[StreamEvent, None]:
        """Async `events` (call it inside the event loop that iterates it). Subscribers in one
        client share one reader connection (see `streaming_rag_client._fanout`); `fanout=False`
        gives each its own blocking reads."""
        if after is not None:
            validate_cursor(after)
        return self._afollow(self._keys(job_id), after, known=False)

    async def areplay(self, job_id: str, speed: float = 0.0) -> AsyncGenerator[StreamEvent, None]:
        """Async `replay`."""
        speed = check_speed(speed)
        started = time.monotonic()
        async for event in self.aevents(job_id):
            delay = replay_delay(event, started, time.monotonic(), speed)
            if delay > 0:
                await asyncio.sleep(delay)
            yield event

    async def astream_events(
        self, query: str, context: dict[str, Any] | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        """Async `stream_events`."""
        job_id = await self.asubmit(query, context)
        async with aclosing(self._afollow(self._keys(job_id), None, fresh=True)) as events:
            async for event in events:
                yield event

    async def astream(
        self, query: str, context: dict[str, Any] | None = None
    ) -> AsyncGenerator[str, None]:
        """Async `stream`."""
        async for event in self.astream_events(query, context):
            if event.type is EventType.CHUNK:
                yield event.data

    async def aquery(self, query: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Async `query`."""
        events = [e async for e in self.astream_events(query, context)]
        return {"answer": "".join(str(e) for e in events), "events": events}

    async def acancel(self, job_id: str) -> bool:
        """Async `cancel`."""
        verdict, retried = await self._async_transport().cancel(self._keys(job_id))
        if verdict == "missing":
            raise JobNotFound(job_id, self.prefix)
        return cancel_succeeded(verdict, retried=retried)

    @overload
    async def astatus(self, job_id: str, *, details: Literal[False] = False) -> JobStatus: ...
    @overload
    async def astatus(self, job_id: str, *, details: Literal[True]) -> JobDetails: ...
    async def astatus(self, job_id: str, *, details: bool = False) -> JobStatus | JobDetails:
        """Async `status`."""
        t = self._async_transport()
        keys = self._keys(job_id)
        status = status_from_check(await t.check(keys))
        if not details:
            return status
        if status is JobStatus.NOT_FOUND:
            return JobDetails(status)
        values = await t.call(lambda: t.events.hmget(keys.meta, USAGE_FIELDS))
        return replace(details_from_fields(status, values), watchers=await t.watchers(keys))

    async def aclose(self) -> None:
        """Close the async connection pool (if this client created it) and the sync one."""
        if self._fanout is not None:
            await self._fanout.aclose()
            self._fanout = None
        if self._async is not None:
            await self._async.aclose(
                queue=self._owns_async, events=self._async_events_client is None
            )
        self._async = None
        self.close()

    async def __aenter__(self) -> StreamingRAGClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
