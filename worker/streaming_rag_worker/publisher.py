"""`Publisher`: one per worker process; writes every job's events to Redis, coalesced.

Events are queued per job and sent by one flusher task: whatever is pending when it wakes goes
to Redis in one pipeline round trip (one PUBLISH script call per job carrying that job's
events in order). While a round trip is in flight, new events accumulate for the next one, so a
quiet worker sends each event at once and a busy one batches without any timer. A job's final
batch (its terminal event) also sets the final status and the retention TTL, and since batches
of one job are sent in order, it lands only after every earlier event of that job.

A job with more than `high_water` unsent events waits for the next flush (back-pressure).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError

from streaming_rag.wire import JobKeys
from streaming_rag.wire.scripts import PUBLISH, publish_call

__all__ = ["JobLost", "Publisher"]

logger = logging.getLogger("streaming_rag.worker")


class JobLost(Exception):
    """The job left the `running` state in Redis (declared lost, or its keys vanished)."""


@dataclass
class _Pending:
    keys: JobKeys
    events: list[bytes] = field(default_factory=list)
    final_status: str = ""
    flushed: asyncio.Future[bool] | None = None


class Publisher:
    """Coalescing writer of job events; start with `start()`, stop with `aclose()`."""

    def __init__(
        self, redis: Any, *, lease_ms: int, retention_ms: int, high_water: int = 512
    ) -> None:
        self._redis = redis
        self._script = redis.register_script(PUBLISH)
        self._lease_ms = lease_ms
        self._retention_ms = retention_ms
        self._high_water = high_water
        self._pending: dict[str, _Pending] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost: set[str] = set()
        self.round_trips = 0
        self.events_sent = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="streaming-rag-publisher")

    def _entry(self, keys: JobKeys) -> _Pending:
        entry = self._pending.get(keys.job_id)
        if entry is None:
            entry = self._pending[keys.job_id] = _Pending(keys)
        return entry

    async def publish(self, keys: JobKeys, payload: bytes) -> None:
        """Queue one non-terminal event; waits only when the job is `high_water` ahead.
        Raises `JobLost` if Redis no longer lists the job as running."""
        if keys.job_id in self._lost:
            raise JobLost(keys.job_id)
        entry = self._entry(keys)
        entry.events.append(payload)
        self._wake.set()
        if len(entry.events) >= self._high_water:
            if entry.flushed is None:
                entry.flushed = asyncio.get_running_loop().create_future()
            if not await asyncio.shield(entry.flushed):
                raise JobLost(keys.job_id)

    async def finish(self, keys: JobKeys, payload: bytes, status: str) -> bool:
        """Queue the terminal event with the job's final status and wait until it is written.
        Returns False when the job was no longer running (nothing was written)."""
        entry = self._entry(keys)
        entry.events.append(payload)
        entry.final_status = status
        if entry.flushed is None:
            entry.flushed = asyncio.get_running_loop().create_future()
        fut = entry.flushed
        self._wake.set()
        try:
            return await asyncio.shield(fut)
        finally:
            self._lost.discard(keys.job_id)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, {}
            try:
                await self._send(list(batch.values()))
            except Exception as exc:
                logger.error("publishing %d job batches failed: %s", len(batch), exc)
                for entry in batch.values():
                    if entry.flushed is not None and not entry.flushed.done():
                        entry.flushed.set_exception(exc)
                    self._lost.add(entry.keys.job_id)

    async def _send(self, entries: list[_Pending]) -> None:
        # EVALSHA straight into the pipeline: redis-py's Script objects would make every
        # pipeline send SCRIPT EXISTS first (an extra round trip per flush). A server that
        # lost the script (restart, SCRIPT FLUSH) answers NOSCRIPT for every call of the
        # batch, none of which ran: load it and send the batch again.
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for e in entries:
                    call = publish_call(
                        e.keys,
                        e.events,
                        lease_ms=self._lease_ms,
                        retention_ms=self._retention_ms,
                        final_status=e.final_status,
                    )
                    pipe.evalsha(self._script.sha, len(call.keys), *call.keys, *call.args)
                results = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                self._script.sha = await self._redis.script_load(PUBLISH)
                continue
            for r in results:
                if isinstance(r, Exception):
                    raise r
            break
        self.round_trips += 1
        for entry, ok in zip(entries, results, strict=True):
            self.events_sent += len(entry.events)
            if not ok:
                self._lost.add(entry.keys.job_id)
            if entry.flushed is not None and not entry.flushed.done():
                entry.flushed.set_result(bool(ok))

    async def aclose(self) -> None:
        """Flush what is pending, then stop the flusher."""
        if self._task is None:
            return
        if self._pending:
            batch, self._pending = self._pending, {}
            try:
                await self._send(list(batch.values()))
            except Exception as exc:
                logger.error("final flush failed: %s", exc)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
