"""`StreamingWorker`: arq's `Worker`, started by wake-ups instead of polling.

Stock arq sleeps `poll_delay` (0.5 s) between queue polls, so a job waits ~250 ms on average
before it starts. Here, between polls, an idle worker blocks on the prefix's wake list
(`{prefix}:wake`), to which every submit pushes a token (its arq job id, and the job's key base
when one server holds both) in the same round trip as the enqueue. The wait is one pipeline of
two commands: ``BLMOVE`` of a token to `{prefix}:wake:taken`, then the TAKE script, which the
server runs as soon as the BLMOVE returns: it claims the job (arq's in-progress marker, so at
most once), STARTs it, and returns its arq record and try count. So the wake-up reply carries
the started job: one round trip from an idle worker to a running job, and no more before its
first event. (With the events on another server than the queue, TAKE cannot START the job: the
job function STARTs it on the events server, one more round trip.)
An idle worker costs no CPU (the server holds the BLMOVE); one token wakes exactly one worker
(no stampede); a worker at `max_jobs` takes no tokens (it waits for a free slot, leaving them
to idle peers); `poll_delay` remains the fallback period for deferred jobs and lost tokens
(a token's reply lost to a dropped connection leaves its job claimed and unstarted-or-started
by nobody: the lease or start deadline ends it, it never runs twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import TYPE_CHECKING, Any

from arq.connections import create_pool, log_redis_info
from arq.jobs import deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import Worker
from redis.exceptions import NoScriptError

from streaming_rag.wire.keys import JobKeys, taken_key, wake_key
from streaming_rag.wire.models import JOB_FUNCTION
from streaming_rag.wire.scripts import CLAIM, TAKE, claim_call, take_call

from ._retry import Backoff, OutageLog, is_transient
from .job import end_invalid

if TYPE_CHECKING:
    from .runner import WorkerRuntime

__all__ = ["StreamingWorker"]

logger = logging.getLogger("streaming_rag.worker")


class StreamingWorker(Worker):
    """arq's `Worker`, woken by submits instead of polling (see the module docstring), with
    a graceful `stop()` and a `close()` that never raises a job's cancellation."""

    _slot_freed: asyncio.Event | None = None
    _claim: Any = None
    _take: Any = None
    _prefetched: dict[str, bytes]

    def __init__(self, runtime: WorkerRuntime, **settings: Any) -> None:
        """`runtime` is what the jobs run with (see `WorkerRuntime`); `settings` are arq's
        `Worker` keyword arguments (normally `runtime.settings()` plus overrides)."""
        super().__init__(**settings)
        self.runtime = runtime

    async def main(self) -> None:
        # arq's Worker.main, with the fixed-period poll replaced by `_wait_for_work`, and every
        # Redis call path riding through outages.
        if self._pool is None:
            self._pool = await self._connect()
        logger.info(
            "starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions)
        )
        with contextlib.suppress(Exception):  # informative only
            await log_redis_info(self.pool, logger.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        self._prefetched = {}
        self._slot_freed = asyncio.Event()
        wake = wake_key(self.runtime.config.prefix)
        self._claim = self.pool.register_script(CLAIM)
        self._take = self.pool.register_script(TAKE)
        backoff, outage = Backoff(), OutageLog(logger, "worker " + self.runtime.config.name)
        while True:
            try:
                if await self._iteration(wake):
                    return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = backoff.next_delay()
                outage.down(exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            outage.up()

    async def _connect(self) -> Any:
        """arq's pool, waiting up to `startup_wait_s` for a server that is not up yet (a
        wrong password or a bad database index fails at once)."""
        cfg = self.runtime.config
        assert self.redis_settings is not None  # WorkerRuntime.settings() always sets it
        backoff = Backoff(cap_s=2.0, deadline_s=cfg.startup_wait_s)
        outage = OutageLog(logger, "worker " + cfg.name + " starting")
        while True:
            try:
                pool = await create_pool(
                    self.redis_settings,
                    retry=self.redis_settings.conn_retries,  # no retries of arq's: ours
                    job_deserializer=self.job_deserializer,
                    job_serializer=self.job_serializer,
                    default_queue_name=self.queue_name,
                    expires_extra_ms=self.expires_extra_ms,
                )
            except Exception as exc:
                if not is_transient(exc) or backoff.expired:
                    raise
                delay = backoff.next_delay()
                outage.down(exc, delay)
                await asyncio.sleep(delay)
                continue
            outage.up()
            return pool

    async def _iteration(self, wake: str) -> bool:
        """One full poll, then wake-up driven starts until the next poll is due. Returns
        True when a burst worker is done."""
        await self._poll_iteration()
        if self.burst:
            if 0 <= self.max_burst_jobs <= self._jobs_started():
                await asyncio.gather(*self.tasks.values())
                return True
            if await self.pool.zcard(self.queue_name) == 0:
                await asyncio.gather(*self.tasks.values())
                return True
        # Between full polls: claim and start each job as its wake-up token arrives.
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.poll_delay_s
        while (remaining := next_poll - loop.time()) > 0:
            claimed = await self._wait_for_work(wake, remaining)
            if claimed is None:
                break
            await self._run_claimed(claimed)
        return False

    async def _wait_for_work(self, wake: str, timeout_s: float) -> list[Any] | None:
        """The jobs a submit's wake-up token claimed for us (TAKE's flat list, maybe empty
        when another worker took the job first); None after `timeout_s`, or as soon as a
        slot frees up while the worker is full (time for a full poll)."""
        assert self._slot_freed is not None
        if not self.allow_pick_jobs:
            await asyncio.sleep(timeout_s)
            return None
        free = self.max_jobs - self.job_counter
        if free <= 0:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._slot_freed.wait()
            return None
        cfg = self.runtime.state.config
        taken = taken_key(cfg.prefix)
        call = take_call(
            self.queue_name,
            taken,
            in_progress_ttl_ms=int(self.in_progress_timeout_s * 1000),
            lease_ms=cfg.lease_ms,
            worker=cfg.name,
            free=free,
            with_start=not self.runtime.state.split,
        )
        # One round trip: the server runs TAKE right after the BLMOVE returns. EVALSHA is sent
        # raw (redis-py's pipeline would check SCRIPT EXISTS first, one more round trip).
        pipe = self.pool.pipeline(transaction=False)
        pipe.execute_command("BLMOVE", wake, taken, "LEFT", "RIGHT", max(timeout_s, 0.01))
        pipe.execute_command("EVALSHA", self._take.sha, len(call.keys), *call.keys, *call.args)
        moved, claimed = await pipe.execute(raise_on_error=False)
        if isinstance(moved, Exception):
            raise moved
        if isinstance(claimed, Exception):
            if not isinstance(claimed, NoScriptError):
                raise claimed
            # a new or restarted server has not the script yet: the token waits in `taken`
            claimed = await self._take(keys=call.keys, args=call.args)
        if moved is None and not claimed:
            return None
        return list(claimed)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim up to the free slots' worth of `job_ids` (arq's poll found them) and START
        them in one script call, then run each (`_run_claimed`)."""
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids or not self.allow_pick_jobs:
            return
        state = self.runtime.state
        cfg = state.config
        ids = await self._readable_ids(job_ids[:free])
        if not ids:
            return
        call = claim_call(
            cfg.prefix,
            self.queue_name,
            ids,
            in_progress_ttl_ms=int(self.in_progress_timeout_s * 1000),
            now_ms=timestamp_ms(),
            lease_ms=cfg.lease_ms,
            worker=cfg.name,
            with_start=not state.split,
        )
        claimed = await self._claim(keys=call.keys, args=call.args)
        await self._run_claimed(claimed)

    async def _run_claimed(self, claimed: list[Any]) -> None:
        """Run each job of CLAIM's or TAKE's flat list (the job function finds its START
        verdict in `state.started`; the arq record and try count spare `run_job` a round
        trip)."""
        state = self.runtime.state
        cfg = state.config
        for i in range(0, len(claimed), 5):
            job_id = claimed[i].decode() if isinstance(claimed[i], bytes) else claimed[i]
            score = int(float(claimed[i + 1]))
            keys = JobKeys.from_arq_job_id(cfg.prefix, job_id)
            verdict = claimed[i + 2].decode()
            if keys is not None and verdict != "unstarted":
                state.claimed(keys.job_id, verdict)  # else the job function STARTs it
            if claimed[i + 3] and int(claimed[i + 4]) == 1:
                self._prefetched[job_id] = claimed[i + 3]
            await self.sem.acquire()  # never waits: at most `free` jobs were claimed
            self.job_counter += 1
            if keys is not None and verdict in ("ok", "unstarted") and not claimed[i + 3]:
                reason = "its arq record has expired or was deleted"
                coro: Any = self._end_invalid(job_id, keys, reason)
            else:
                coro = self.run_job(job_id, score)
            task = self.loop.create_task(coro)
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _readable_ids(self, job_ids: list[bytes]) -> list[str]:
        """The ids as text; a queue member that is not UTF-8 is not a job anybody can run:
        it leaves the queue (logged), so it cannot stop the worker."""
        ids: list[str] = []
        for raw in job_ids:
            try:
                ids.append(raw.decode() if isinstance(raw, bytes) else str(raw))
            except UnicodeDecodeError:
                logger.warning("dropped a queue member that is not UTF-8: %r", raw[:80])
                await self.pool.zrem(self.queue_name, raw)
        return ids

    async def _end_invalid(self, job_id: str, keys: JobKeys, reason: str) -> None:
        """End a claimed job whose record cannot be run, then clear arq's keys for it."""
        try:
            await end_invalid(self.runtime.state, keys, reason)
        except Exception:
            logger.exception("job %s: could not end it after an invalid record", keys.job_id)
        await self._finish(job_id)

    async def _finish(self, job_id: str) -> None:
        """arq's bookkeeping for a job run here (in-progress marker, queue entry); never
        raises: a job whose bookkeeping fails is cleaned up by the sweep."""
        try:
            await asyncio.shield(self.finish_job(job_id, True, None, None, False, None, None))
        except Exception as exc:
            logger.warning("job %s: arq bookkeeping failed (%s); the sweep ends it", job_id, exc)

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        if self._slot_freed is not None:
            self._slot_freed.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop picking jobs, let running jobs finish for `grace_s` seconds (default: the
        configured shutdown grace), cancel the rest (each still ends its stream with an
        ERROR), then close the worker's connections."""
        self.allow_pick_jobs = False
        grace = self._job_completion_wait if grace_s is None else grace_s
        pending = [t for t in self.tasks.values() if not t.done()]
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)
        for task in self.tasks.values():
            if not task.done():
                task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        if self.main_task is not None and not self.main_task.done():
            self.main_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.main_task
        await self.close()

    async def close(self) -> None:
        # arq's close(), but a job task's exception or cancellation is not re-raised here.
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
        try:
            await self.pool.delete(self.health_check_key)
        except Exception as exc:  # stopping during an outage: the key expires by itself
            logger.info("could not delete the health-check key while stopping (%s)", exc)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None

    async def run_job(self, job_id: str, score: int) -> None:
        """Run a job CLAIM prefetched (first try, our function) without arq's extra round
        trip (GET record, INCR try); anything else goes through arq's own `run_job`."""
        record = self._prefetched.pop(job_id, None)
        if record is None:
            return await self._run_job_by_arq(job_id, score)
        try:
            name, args, kwargs, _, enqueue_ms = deserialize_job_raw(
                record, deserializer=self.job_deserializer
            )
        except Exception as exc:
            keys = JobKeys.from_arq_job_id(self.runtime.config.prefix, job_id)
            if keys is None:
                return await self._run_job_by_arq(job_id, score)  # arq reports it
            return await self._end_invalid(job_id, keys, f"cannot decode its record ({exc})")
        function = self.functions.get(name)
        if name != JOB_FUNCTION or function is None or hasattr(function, "next_run"):
            return await self._run_job_by_arq(job_id, score)
        ctx = {
            **self.ctx,
            "job_id": job_id,
            "job_try": 1,
            "enqueue_time": ms_to_datetime(enqueue_ms),
            "score": score,
        }
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        task = self.loop.create_task(function.coroutine(ctx, *args, **kwargs))
        self.job_tasks[job_id] = task
        started = timestamp_ms()
        try:
            await asyncio.wait_for(task, timeout_s)
        except (Exception, asyncio.CancelledError) as exc:  # as arq: recorded, not retried
            self.jobs_failed += 1
            logger.warning("job %s failed after %d ms: %r", job_id, timestamp_ms() - started, exc)
        else:
            self.jobs_complete += 1
        finally:
            del self.job_tasks[job_id]
        await self._finish(job_id)

    async def _run_job_by_arq(self, job_id: str, score: int) -> None:
        """arq's own `run_job`; then drop the START verdict CLAIM left for the job function
        (arq may fail the job before the function runs and takes it)."""
        try:
            await super().run_job(job_id, score)
        except Exception as exc:  # e.g. its bookkeeping met an outage: the sweep ends it
            logger.warning("job %s: arq could not run it (%s)", job_id, exc)
        finally:
            keys = JobKeys.from_arq_job_id(self.runtime.config.prefix, job_id)
            if keys is not None:
                self.runtime.state.take_start_verdict(keys.job_id)
