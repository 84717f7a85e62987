"""Building and running the arq worker: settings, startup/shutdown hooks, cancel listener.

arq's defaults are not trusted: jobs travel as msgpack (never pickle), run at most once
(`max_tries=1`, no retry on cancellation), keep no arq result (the answer is the event
stream), and get a long job timeout so arq's in-progress marker cannot expire under a running
answer. SIGTERM/SIGINT stop job pickup, give running jobs `shutdown_grace_s` to finish, then
cancel them: each cancelled job still writes its terminal ERROR before the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from arq.connections import RedisSettings, create_pool, log_redis_info
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.exceptions import RedisError

from streaming_rag import StreamingRAG
from wire import pack_job, unpack_job
from wire.keys import cancel_channel, queue_name, wake_key
from wire.scripts import CLAIM

from .app import load_app
from .config import WorkerConfig
from .job import JOB_FUNCTION, WorkerState, run_query

__all__ = ["StreamingWorker", "build_worker", "worker_kwargs"]

logger = logging.getLogger("streaming_rag.worker")


async def _listen_for_cancels(state: WorkerState) -> None:
    """Cancel jobs of this process as their ids arrive on the prefix's cancel channel."""
    channel = cancel_channel(state.config.prefix)
    while True:
        pubsub = state.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message and message.get("type") == "message":
                    data = message["data"]
                    job_id = data.decode() if isinstance(data, bytes) else str(data)
                    if state.request_cancel(job_id):
                        logger.info("job %s cancelled on request", job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection blip: heartbeats still see the cancel flag
            logger.warning("cancel listener lost its connection (%s); reconnecting", exc)
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


def _make_startup(config: WorkerConfig, rag: StreamingRAG | None) -> Any:
    async def startup(ctx: dict[str, Any]) -> None:
        app = rag if rag is not None else load_app(config.app)
        state = WorkerState(config, app, ctx["redis"])
        state.publisher.start()
        ctx["streaming_rag"] = state
        ctx["streaming_rag_listener"] = asyncio.create_task(_listen_for_cancels(state))
        logger.info(
            "worker %s ready: prefix %r, queue %r, concurrency %d, app %s",
            config.name,
            config.prefix,
            queue_name(config.prefix),
            config.concurrency,
            repr(app),
        )

    return startup


async def _shutdown(ctx: dict[str, Any]) -> None:
    listener = ctx.pop("streaming_rag_listener", None)
    if listener is not None:
        listener.cancel()
        with contextlib.suppress(BaseException):
            await listener
    state: WorkerState | None = ctx.get("streaming_rag")
    if state is not None:
        await state.publisher.aclose()


def worker_kwargs(config: WorkerConfig, *, rag: StreamingRAG | None = None) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker` implementing `config`.

    `rag` serves a ready `StreamingRAG` instead of loading `config.app` at startup.
    """
    return {
        "functions": [func(run_query, name=JOB_FUNCTION, max_tries=1)],
        "queue_name": queue_name(config.prefix),
        "redis_settings": RedisSettings.from_dsn(config.redis_url),
        "on_startup": _make_startup(config, rag),
        "on_shutdown": _shutdown,
        "job_serializer": pack_job,
        "job_deserializer": unpack_job,
        "max_jobs": config.concurrency,
        "max_tries": 1,
        "retry_jobs": False,
        "keep_result": 0,
        "job_timeout": config.job_timeout_s,
        "job_completion_wait": config.shutdown_grace_s,
        "health_check_key": f"{config.prefix}:health-check",
        "log_results": False,
        "ctx": {"streaming_rag_wake_key": wake_key(config.prefix)},
    }


class StreamingWorker(Worker):
    """arq's `Worker`, woken by submits instead of polling, with a graceful `stop()`.

    Stock arq sleeps `poll_delay` (0.5 s) between queue polls, so a job waits ~250 ms on
    average before it starts. Here, between polls, an idle worker blocks in BLPOP on the
    prefix's wake list (`{prefix}:wake`), to which every submit pushes one token in the same
    round trip as the enqueue: the job starts within a few round trips, an idle worker costs
    no CPU (the server holds the BLPOP), and one token wakes exactly one worker (no
    stampede). `poll_delay` remains the fallback period, for deferred jobs and lost tokens.
    A worker at `max_jobs` does not take tokens; it waits for a free slot instead, leaving
    the token to an idle peer.
    """

    _wake_client: Any = None
    _slot_freed: asyncio.Event | None = None
    _claim: Any = None

    async def main(self) -> None:
        # arq's Worker.main, with the fixed-period poll replaced by `_wait_for_work`.
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        logger.info(
            "starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions)
        )
        await log_redis_info(self.pool, logger.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        # BLPOP holds its connection: give it one of its own, on the same server.
        self._wake_client = self.pool.client()
        self._slot_freed = asyncio.Event()
        wake = self.ctx.get("streaming_rag_wake_key")
        self._claim = self.pool.register_script(CLAIM)
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._poll_iteration()
                if self.burst:
                    if 0 <= self.max_burst_jobs <= self._jobs_started():
                        await asyncio.gather(*self.tasks.values())
                        return
                    if await self.pool.zcard(self.queue_name) == 0:
                        await asyncio.gather(*self.tasks.values())
                        return
                # Between full polls: start each job as its wake-up token arrives.
                next_poll = loop.time() + self.poll_delay_s
                while (remaining := next_poll - loop.time()) > 0:
                    job_id = await self._wait_for_work(wake, remaining)
                    if job_id is None:
                        break
                    await self.start_jobs([job_id])
        finally:
            client, self._wake_client = self._wake_client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _wait_for_work(self, wake_key: str | None, timeout_s: float) -> bytes | None:
        """A job id from a submit's wake-up token; None after `timeout_s`, or as soon as a
        slot frees up while the worker is full (time for a full poll)."""
        assert self._slot_freed is not None
        if not self.allow_pick_jobs or wake_key is None:
            await asyncio.sleep(timeout_s)
            return None
        if self.job_counter >= self.max_jobs:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._slot_freed.wait()
            return None
        try:
            popped = await self._wake_client.blpop([wake_key], timeout=max(timeout_s, 0.01))
        except (OSError, RedisError) as exc:  # a blip: fall back to the timed poll
            logger.warning("waiting for wake-ups failed (%s); polling instead", exc)
            await asyncio.sleep(timeout_s)
            return None
        return popped[1] if popped else None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim up to the free slots' worth of `job_ids` and START them in one script call,
        then run each (the job function finds its START verdict in `state.started`)."""
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids or not self.allow_pick_jobs:
            return
        state = self.ctx["streaming_rag"]
        cfg = state.config
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        args = [ttl_ms, timestamp_ms(), cfg.lease_ms, cfg.name, cfg.prefix, *job_ids[:free]]
        claimed = await self._claim(keys=[self.queue_name], args=args)
        head = len(cfg.prefix) + 1
        for i in range(0, len(claimed), 3):
            job_id = claimed[i].decode() if isinstance(claimed[i], bytes) else claimed[i]
            score = int(float(claimed[i + 1]))
            state.started[job_id[head:]] = claimed[i + 2].decode()
            await self.sem.acquire()  # never waits: at most `free` jobs were claimed
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

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
        await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None


def build_worker(
    config: WorkerConfig, *, rag: StreamingRAG | None = None, **overrides: Any
) -> StreamingWorker:
    """A `StreamingWorker` for `config` (`overrides` go straight to arq's `Worker`)."""
    return StreamingWorker(**{**worker_kwargs(config, rag=rag), **overrides})
