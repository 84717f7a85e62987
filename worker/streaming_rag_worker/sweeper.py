"""The sweep: live workers end the jobs nobody watches.

A job's worker can die without a subscriber to notice (only CHECK ends a job whose lease
expired), and a job can wait in the queue past its start deadline with no worker free. Left
alone, such a job would keep its stream and hash forever, with no terminal event. So every
worker runs `sweep_forever`: every `interval_s`, the one worker that takes the deployment's
sweep lock (``SET NX PX``) runs CHECK for each job of the index (``{prefix}:jobs``, filled by
SUBMIT) that is due: CHECK appends the "Worker lost" or queue ERROR when it is time, sets the
retention TTL and clears arq's keys. Jobs still queued or running are due again one lease
later; ended and missing jobs leave the index. Cost: one CHECK per unfinished job per lease
period, per deployment, not per worker.

The lock and the index live on the queue server; CHECK runs where the jobs live. With the
events on another server (a cluster, say), CHECK declares the job's keys only and each job it
ends is then DEQUEUEd from arq's queue and records (the split of docs/wire-format.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from streaming_rag.wire import JobKeys
from streaming_rag.wire.keys import index_key, sweep_lock_key
from streaming_rag.wire.scripts import CHECK, DEQUEUE, check_call, dequeue_call

from ._retry import Backoff, OutageLog, is_transient
from .events_client import is_cluster

__all__ = ["SWEEP_BATCH", "sweep_forever", "sweep_once"]

logger = logging.getLogger("streaming_rag.worker")

#: Jobs checked per round trip.
SWEEP_BATCH = 500
_OPEN = frozenset({"queued", "running"})


async def _check_all(events: Any, calls: list[Any]) -> list[Any]:
    """Run CHECK for each call: one pipeline on a single server, concurrent calls on a
    cluster (each routed to its job's slot)."""
    check = events.register_script(CHECK)
    if is_cluster(events):
        return list(await asyncio.gather(*(check(keys=c.keys, args=c.args) for c in calls)))
    async with events.pipeline(transaction=False) as pipe:
        for call in calls:
            await check(keys=call.keys, args=call.args, client=pipe)
        return list(await pipe.execute())


async def sweep_once(
    redis: Any,
    events: Any = None,
    *,
    prefix: str,
    worker: str,
    interval_ms: int,
    lease_ms: int,
    retention_ms: int,
) -> dict[str, int]:
    """One sweep, if this worker takes the lock. `redis` is the queue server's client,
    `events` the events server's (None: the same server). Returns how many jobs each CHECK
    verdict covered (empty when another worker holds the lock or nothing was due)."""
    if not await redis.set(sweep_lock_key(prefix), worker, nx=True, px=interval_ms):
        return {}
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    index = index_key(prefix)
    counts: dict[str, int] = {}
    due = await redis.zrangebyscore(index, "-inf", now_ms, start=0, num=SWEEP_BATCH)
    if not due:
        return counts
    ids = [d.decode() if isinstance(d, bytes) else str(d) for d in due]
    split = events is not None
    calls = [
        check_call(JobKeys(prefix, job_id), retention_ms=retention_ms, with_queue=not split)
        for job_id in ids
    ]
    verdicts = await _check_all(redis if events is None else events, calls)
    open_ids: dict[str, int] = {}
    ended: list[str] = []
    for job_id, raw in zip(ids, verdicts, strict=True):
        verdict = raw.decode() if isinstance(raw, bytes) else str(raw)
        counts[verdict] = counts.get(verdict, 0) + 1
        if verdict in _OPEN:
            open_ids[job_id] = now_ms + lease_ms
        else:
            ended.append(job_id)
    dequeue = redis.register_script(DEQUEUE)
    async with redis.pipeline(transaction=False) as pipe:
        if open_ids:
            pipe.zadd(index, open_ids, xx=True)
        if ended:
            pipe.zrem(index, *ended)
        if split:  # the queue half of each end CHECK just made
            for job_id, raw in zip(ids, verdicts, strict=True):
                if raw in (b"lost", b"withdrawn", "lost", "withdrawn"):
                    call = dequeue_call(JobKeys(prefix, job_id))
                    await dequeue(keys=call.keys, args=call.args, client=pipe)
        await pipe.execute()
    for verdict in ("lost", "withdrawn"):
        if counts.get(verdict):
            logger.info("sweep: %d job(s) ended as %s", counts[verdict], verdict)
    return counts


async def sweep_forever(
    redis: Any,
    events: Any = None,
    *,
    prefix: str,
    worker: str,
    interval_s: float,
    lease_ms: int,
    retention_ms: int,
) -> None:
    """Run `sweep_once` every `interval_s` until cancelled, riding through outages."""
    interval_ms = max(1, int(interval_s * 1000))
    backoff, outage = Backoff(cap_s=interval_s), OutageLog(logger, "sweep")
    while True:
        try:
            await sweep_once(
                redis,
                events,
                prefix=prefix,
                worker=worker,
                interval_ms=interval_ms,
                lease_ms=lease_ms,
                retention_ms=retention_ms,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_transient(exc):
                delay = backoff.next_delay()
                outage.down(exc, delay)
                await asyncio.sleep(delay)
                continue
            logger.exception("sweep failed; trying again in %.1f s", interval_s)
        else:
            backoff.reset()
            outage.up()
        await asyncio.sleep(interval_s)
