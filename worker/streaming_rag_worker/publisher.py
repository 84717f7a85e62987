"""`Publisher`: one per worker process; writes every job's events to Redis, coalesced,
idempotently, and through outages and failovers.

Coalescing: events are queued per job and sent by one flusher task. Whatever is pending when
it wakes goes to Redis in one pipeline round trip (one PUBLISH script call per job carrying
that job's events in order). While a round trip is in flight, new events accumulate for the
next one, so a quiet worker sends each event at once and a busy one batches without a timer.
A job's final batch (its terminal event) also sets the final status and the retention TTL;
batches of one job are sent in order, so it lands only after every earlier event.

Idempotent: each event's stream entry id is decided here, once, when the event is published
(`EntryIds`: ``<ms>-<seq>``, monotonic per job). The PUBLISH script skips entries the stream
already holds, so a batch whose reply was lost is simply sent again: never duplicated, never
gapped.

Failover-proof: the publisher keeps every event of a running job until its terminal event is
written. Each batch names the last entry the publisher knows it wrote before it; a stream whose
top is below that lost its tail (a replica promoted before it had every write), and PUBLISH
answers with the top it has: the publisher re-sends everything after it, with the original
ids, so the stream equals what subscribers saw live and their cursors stay valid.

Outages: a batch that fails with a connection error stays pending and is retried with capped
exponential backoff and jitter (`Backoff`) until the server answers; the loss and the recovery
are each logged once. A job whose outage outlasts its lease is ended by whoever runs CHECK
first (a subscriber or a worker's sweep) as "Worker lost", and PUBLISH then answers 0: the job
stops here (`JobLost`). A job with more than `high_water` unsent events waits (back-pressure).

`flush_ms` (default 0: off) is an optional coalescing window: the flusher waits that long after
the first pending event before it sends, so tokens an LLM paces a few ms apart travel together
(fewer script calls and round trips per token, at up to `flush_ms` of added latency).

On a Redis Cluster a flush sends one PUBLISH per job concurrently instead of one pipeline
(each goes to its job's slot; redis-py follows MOVED and ASK), and a job's end waits for a
replica of its own shard (WAIT on the job's node).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import Any

from redis.exceptions import NoScriptError

from streaming_rag.wire import JobKeys
from streaming_rag.wire.ids import EntryIds, parse_entry_id
from streaming_rag.wire.scripts import PUBLISH, publish_call

from ._retry import Backoff, OutageLog, is_transient
from .direct import DirectConnection
from .events_client import is_cluster
from .metrics import NO_METRICS, Metrics

__all__ = ["JobLost", "Publisher"]

logger = logging.getLogger("streaming_rag.worker")


class JobLost(Exception):
    """The job left the `running` state in Redis (declared lost, or its keys vanished)."""


class _JobLog:
    """Every event of one running job, with its entry id, and how far the stream has them."""

    __slots__ = (
        "entries",
        "final_status",
        "flushed",
        "ids",
        "keys",
        "keys_of",
        "sent",
        "unacked_since",
    )

    def __init__(self, keys: JobKeys) -> None:
        self.keys = keys
        self.ids = EntryIds()
        self.entries: list[tuple[str, bytes]] = []
        self.keys_of: list[tuple[int, int]] = []  # parsed ids, for the gap search
        self.sent = 0  # entries[:sent] are known to be in the stream
        self.final_status = ""
        self.flushed: asyncio.Future[bool] | None = None
        self.unacked_since: float | None = None

    def add(self, payload: bytes) -> None:
        entry_id = self.ids.next(time.time_ns() // 1_000_000)
        self.entries.append((entry_id, payload))
        self.keys_of.append(self.ids.last)

    @property
    def expected_top(self) -> str:
        return self.entries[self.sent - 1][0] if self.sent else "0-0"

    def rewind_to(self, top: str) -> int:
        """The stream's top is `top`: everything after it must be sent again. Returns how
        many entries the stream had lost."""
        first = bisect.bisect_right(self.keys_of, parse_entry_id(top), 0, self.sent)
        lost, self.sent = self.sent - first, first
        return lost

    def resolve(self, ok: bool) -> None:
        if self.flushed is not None and not self.flushed.done():
            self.flushed.set_result(ok)
        self.flushed = None


class Publisher:
    """Coalescing writer of job events; start with `start()`, stop with `aclose()`."""

    metrics: Metrics = NO_METRICS  # the worker's (`streaming_rag_worker.metrics`)

    def __init__(
        self,
        redis: Any,
        *,
        lease_ms: int,
        retention_ms: int,
        high_water: int = 512,
        backoff: Backoff | None = None,
        replica_ack_timeout_ms: int = 100,
        replica_ack_window_s: float = 30.0,
        flush_ms: float = 0.0,
    ) -> None:
        self._redis = redis
        self._cluster = is_cluster(redis)
        self._script = redis.register_script(PUBLISH)
        self._direct = DirectConnection(redis.connection_pool) if not self._cluster else None
        self._lease_ms = lease_ms
        self._retention_ms = retention_ms
        self._high_water = high_water
        self._backoff = backoff or Backoff()
        self._replicas: int | None = None  # None: not asked yet
        self._ack_timeout_ms = replica_ack_timeout_ms
        self._ack_window_s = replica_ack_window_s
        self._flush_s = max(0.0, flush_ms) / 1000
        self._logs: dict[str, _JobLog] = {}
        self._pending: dict[str, _JobLog] = {}  # jobs with unsent entries, in arrival order
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is pending
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._lost: set[str] = set()
        self._outage = OutageLog(logger, "publishing events")
        self.round_trips = 0
        self.events_sent = 0
        self.events_resent = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="streaming-rag-publisher")

    def _log(self, keys: JobKeys) -> _JobLog:
        log = self._logs.get(keys.job_id)
        if log is None:
            log = self._logs[keys.job_id] = _JobLog(keys)
        return log

    def _flushed(self, log: _JobLog) -> asyncio.Future[bool]:
        if log.flushed is None:
            log.flushed = asyncio.get_running_loop().create_future()
        return log.flushed

    async def publish(self, keys: JobKeys, payload: bytes) -> None:
        """Queue one non-terminal event (its entry id is decided now); waits only when the
        job is `high_water` events ahead of Redis. Raises `JobLost` if Redis no longer lists
        the job as running."""
        if keys.job_id in self._lost:
            raise JobLost(keys.job_id)
        log = self._log(keys)
        log.add(payload)
        self._queue(log)
        behind = len(log.entries) - log.sent >= self._high_water
        if behind and not await asyncio.shield(self._flushed(log)):
            raise JobLost(keys.job_id)

    async def finish(self, keys: JobKeys, payload: bytes, status: str) -> bool:
        """Queue the terminal event with the job's final status and wait until it is written
        (through outages). Returns False when the job was no longer running (nothing was
        written), True once the terminal event is in the stream."""
        log = self._log(keys)
        if keys.job_id not in self._lost:
            log.add(payload)
            log.final_status = status
            self._queue(log)
        try:
            while keys.job_id not in self._lost:
                await asyncio.shield(self._flushed(log))
                if log.sent == len(log.entries):
                    return True
            return False
        finally:
            self._lost.discard(keys.job_id)
            self._logs.pop(keys.job_id, None)
            self._pending.pop(keys.job_id, None)

    def _queue(self, log: _JobLog) -> None:
        self._pending[log.keys.job_id] = log
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                if self._flush_s:  # the coalescing window: let more events join this flush
                    await asyncio.sleep(self._flush_s)
                batch = list(self._pending.values())
                self._pending = {}
                try:
                    await self._send(batch)
                except Exception as exc:
                    for log in batch:  # nothing of the batch is known written: keep it all
                        if len(log.entries) > log.sent:
                            self._pending.setdefault(log.keys.job_id, log)
                    if not is_transient(exc):
                        self._fail(batch, exc)
                        continue
                    delay = self._backoff.next_delay()
                    self._outage.down(exc, delay)
                    await asyncio.sleep(delay)
                    continue
                self._backoff.reset()
                if self._outage.down_s is not None:
                    self._outage.up()
                    await self._count_replicas()  # the server may be another one now

    def _fail(self, batch: list[_JobLog], exc: BaseException) -> None:
        """A batch Redis refused for good (not an outage): its jobs stop here."""
        logger.error("publishing %d job batches failed: %s", len(batch), exc)
        for log in batch:
            self._pending.pop(log.keys.job_id, None)
            self._lost.add(log.keys.job_id)
            log.resolve(False)

    async def _send(self, logs: list[_JobLog]) -> None:
        # EVALSHA straight onto the publisher's own connection (`DirectConnection`: a Script
        # object in a pipeline sends SCRIPT EXISTS first, and redis-py's per-command machinery
        # costs as much CPU as the call). A server that lost the script (restart, failover,
        # SCRIPT FLUSH) answers NOSCRIPT for every call of the batch, none of which ran: load
        # it and send the batch again.
        if self._replicas is None:
            await self._count_replicas()
        ends = [len(log.entries) for log in logs]
        t0 = time.perf_counter()
        if self._direct is None:  # a cluster
            await self._send_each(logs, ends, t0)
            return
        wait = bool(self._replicas) and any(log.final_status for log in logs)
        for attempt in range(2):
            commands: list[list[Any]] = []
            for log, end in zip(logs, ends, strict=True):
                call = self._call(log, end)
                commands.append(
                    ["EVALSHA", self._script.sha, len(call.keys), *call.keys, *call.args]
                )
            if wait:  # a job's end counts once a replica has it (`_count_replicas`)
                commands.append(["WAIT", self._replicas, self._ack_timeout_ms])
            results = await self._direct.call(commands)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                self._script.sha = await self._redis.script_load(PUBLISH)
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            break
        self.round_trips += 1
        self.metrics.flushed(sum(e - log.sent for log, e in zip(logs, ends, strict=True)), t0)
        acked = int(results.pop()) >= (self._replicas or 0) if wait else True
        for log, end, result in zip(logs, ends, results, strict=True):
            if not acked and log.final_status and end == len(log.entries) and result == 1:
                self._unacked(log, end)
                continue
            self._settle(log, end, result)

    def _call(self, log: _JobLog, end: int) -> Any:
        return publish_call(
            log.keys,
            log.entries[log.sent : end],
            expected_top=log.expected_top,
            lease_ms=self._lease_ms,
            retention_ms=self._retention_ms,
            final_status=log.final_status if end == len(log.entries) else "",
        )

    async def _send_each(self, logs: list[_JobLog], ends: list[int], t0: float) -> None:
        """A cluster's flush: each job's PUBLISH on its own (concurrently), a job's end then
        WAITs for a replica of its shard. An error of any fails the whole batch, which is
        sent again (idempotent)."""

        async def one(log: _JobLog, end: int) -> tuple[Any, bool]:
            call = self._call(log, end)
            result = await self._script(keys=call.keys, args=call.args)
            if not (self._replicas and call.args[1] and result == 1):
                return result, True
            node = self._redis.get_node_from_key(log.keys.events)
            acks = await self._redis.execute_command(
                "WAIT", self._replicas, self._ack_timeout_ms, target_nodes=node
            )
            return result, int(acks) >= self._replicas

        replies = await asyncio.gather(
            *(one(log, end) for log, end in zip(logs, ends, strict=True)), return_exceptions=True
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        self.round_trips += 1
        self.metrics.flushed(sum(e - log.sent for log, e in zip(logs, ends, strict=True)), t0)
        for log, end, (result, acked) in zip(logs, ends, replies, strict=True):  # type: ignore[misc]
            if not acked:
                self._unacked(log, end)
                continue
            self._settle(log, end, result)

    async def _count_replicas(self) -> None:
        """How many replicas a job's end must reach before it counts as written: 1 when the
        server is a primary with replicas (a failover must not lose an answer's end that
        subscribers may have seen), else 0. Sticky: once a deployment has shown a replica, a
        primary that has none for a moment (a failover under way) does not lower it."""
        try:
            if self._cluster:
                await self._redis.initialize()
                seen = 1 if self._redis.get_replicas() else 0
            else:
                info = await self._redis.info("replication")
                seen = 1 if int(info.get("connected_slaves", 0) or 0) > 0 else 0
        except Exception as exc:
            if not is_transient(exc):
                raise
            return  # asked again before the next send
        self._replicas = max(self._replicas or 0, seen)

    def _unacked(self, log: _JobLog, end: int) -> None:
        """A job's end was written but no replica acknowledged it in time: keep its terminal
        event and write it again later (idempotent), until a replica has it or
        `replica_ack_window_s` has passed since the first try (then it counts, with a
        warning: a lone primary whose replica is down still finishes its jobs)."""
        now = time.monotonic()
        since = log.unacked_since = log.unacked_since or now
        if now - since >= self._ack_window_s:
            logger.warning(
                "job %s ended without a replica acknowledging it within %.0f s",
                log.keys.job_id,
                self._ack_window_s,
            )
            self._settle(log, end, 1)
            return
        self.events_sent += end - 1 - log.sent
        log.sent = end - 1
        asyncio.get_running_loop().call_later(self._backoff.cap_s / 4, self._queue, log)

    def _settle(self, log: _JobLog, end: int, result: Any) -> None:
        job_id = log.keys.job_id
        if isinstance(result, bytes | str):  # a gap: the stream's top, below what we wrote
            top = result.decode() if isinstance(result, bytes) else result
            lost = log.rewind_to(top)
            self.events_resent += lost
            logger.warning(
                "job %s: the stream had lost its last %d events (a failover?); re-sending "
                "them with their original ids",
                job_id,
                lost,
            )
            self._pending.setdefault(job_id, log)
            self._wake.set()
            return
        if not result:
            self._lost.add(job_id)
            self._pending.pop(job_id, None)
            log.resolve(False)
            return
        self.events_sent += end - log.sent
        log.sent = end
        if log.sent < len(log.entries):
            self._pending.setdefault(job_id, log)  # more arrived meanwhile
        log.resolve(True)

    async def aclose(self, *, flush_timeout_s: float = 5.0) -> None:
        """Flush what is pending (for at most `flush_timeout_s`), then stop the flusher."""
        if self._task is None:
            return
        if self._pending:
            self._wake.set()
            try:
                async with asyncio.timeout(flush_timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                logger.error(
                    "stopping with %d jobs' events unsent after %.1f s (Redis unavailable?)",
                    len(self._pending),
                    flush_timeout_s,
                )
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        if self._direct is not None:
            await self._direct.aclose()
