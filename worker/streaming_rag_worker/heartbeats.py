"""`Heartbeats`: one task per worker process renews the lease of every job the process runs, in
one round trip per beat.

A task per job, each sleeping `heartbeat_s` and sending its own HEARTBEAT, costs one timer and
one round trip per job per second: at 1,000 running answers that is 1,000 round trips a
second (a fifth of a core here), and under that load the beats themselves run late, so leases
expire on a worker that is alive. Here one task wakes every `heartbeat_s` and sends every
running job's HEARTBEAT at once: one pipeline on a single server (EVALSHA straight into it, no
SCRIPT EXISTS round trip), concurrent calls on a Redis Cluster (each to its job's slot).

Each job's reply is handled as the per-job heartbeat did: 'cancel' cancels the job here;
'running' with `abandon_after_s` set asks whether anybody still watches (`Unwatched`); any
other status (the job was ended elsewhere, e.g. declared lost) stops it here. A beat that
fails (an outage) is skipped: the lease has two beats of slack, and the next beat retries.
A job is renewed from the first beat after it is added (at most `heartbeat_s` later).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError

from streaming_rag.wire import JobKeys
from streaming_rag.wire.scripts import HEARTBEAT, heartbeat_call

from .abandon import Unwatched
from .config import WorkerConfig
from .events_client import is_cluster

__all__ = ["Heartbeats"]

logger = logging.getLogger("streaming_rag.worker")


class Heartbeats:
    """The lease renewals of one worker process (see the module docstring). `on_cancel(job_id,
    abandoned)` stops a job here; `is_running(job_id)` tells whether its pump still runs."""

    def __init__(
        self,
        redis: Any,
        config: WorkerConfig,
        *,
        on_cancel: Callable[[str, bool], None],
        is_running: Callable[[str], bool],
    ) -> None:
        self._redis = redis
        self._cfg = config
        self._cluster = is_cluster(redis)
        self._script = redis.register_script(HEARTBEAT)
        self._on_cancel = on_cancel
        self._is_running = is_running
        self._jobs: dict[str, tuple[JobKeys, Unwatched | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.beats = 0  # round trips sent (tests and metrics read it)

    def add(self, keys: JobKeys) -> None:
        """Renew `keys`' lease from the next beat on, until `discard`."""
        unwatched = Unwatched.for_job(self._redis, keys, self._cfg.abandon_after_s)
        self._jobs[keys.job_id] = (keys, unwatched)
        if self._task is None or self._task.done():  # in a context of its own, not the job's
            self._task = asyncio.create_task(
                self._run(), name="streaming-rag-heartbeats", context=contextvars.Context()
            )

    def discard(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.heartbeat_s)
            try:
                await self._once()
            except Exception:  # never let one bad beat stop every lease's renewal
                logger.exception("heartbeat failed; the next one retries")

    async def _once(self) -> None:
        """One beat: renew every job's lease, then act on each job's reply."""
        jobs = list(self._jobs.values())
        if not jobs:
            return
        try:
            replies = await self._beat([keys for keys, _ in jobs])
        except Exception as exc:  # an outage: the next beat retries, the lease has slack
            logger.debug("heartbeat of %d jobs failed: %s", len(jobs), exc)
            return
        checks = []
        for (keys, unwatched), reply in zip(jobs, replies, strict=True):
            if isinstance(reply, Exception) or keys.job_id not in self._jobs:
                continue
            status = reply.decode() if isinstance(reply, bytes) else str(reply)
            if status == "cancel":
                self._on_cancel(keys.job_id, False)
            elif status == "running":
                if unwatched is not None:
                    checks.append(self._abandon_if_unwatched(keys, unwatched))
            elif self._is_running(keys.job_id):
                logger.warning("job %s is %s in Redis; stopping it here", keys.job_id, status)
                self._on_cancel(keys.job_id, False)
        if checks:
            await asyncio.gather(*checks)

    async def _abandon_if_unwatched(self, keys: JobKeys, unwatched: Unwatched) -> None:
        if await unwatched.abandoned() and keys.job_id in self._jobs:
            self._on_cancel(keys.job_id, True)

    async def _beat(self, jobs: list[JobKeys]) -> list[Any]:
        """One HEARTBEAT per job in one round trip; a job's error reply is in its place."""
        cfg = self._cfg
        calls = [
            heartbeat_call(k, lease_ms=cfg.lease_ms, worker=cfg.name, retention_ms=cfg.retention_ms)
            for k in jobs
        ]
        self.beats += 1
        if self._cluster:
            return list(
                await asyncio.gather(
                    *(self._script(keys=c.keys, args=c.args) for c in calls),
                    return_exceptions=True,
                )
            )
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                for c in calls:
                    pipe.execute_command("EVALSHA", self._script.sha, len(c.keys), *c.keys, *c.args)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
                self._script.sha = await self._redis.script_load(HEARTBEAT)
                continue
            break
        return replies
