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
from datetime import UTC, datetime
from typing import Any

from arq.worker import func

from streaming_rag import StreamingRAG
from streaming_rag.exceptions import WorkerConfigError
from streaming_rag.wire import ServerSpec, pack_job, unpack_job
from streaming_rag.wire.keys import cancel_channel, queue_name

from ._retry import Backoff, OutageLog, retrying
from .app import load_app
from .config import WorkerConfig
from .events_client import connect_events
from .job import JOB_FUNCTION, WorkerState, run_record
from .streaming_worker import StreamingWorker
from .sweeper import sweep_forever

__all__ = ["StreamingWorker", "WorkerRuntime", "build_worker", "worker_kwargs"]

logger = logging.getLogger("streaming_rag.worker")


async def _listen_for_cancels(state: WorkerState) -> None:
    """Cancel jobs of this process as their ids arrive on the prefix's cancel channel."""
    channel = cancel_channel(state.config.prefix)
    backoff, outage = Backoff(), OutageLog(logger, "cancel listener")
    while True:
        pubsub = state.queue.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            backoff.reset()
            outage.up()
            async for message in pubsub.listen():
                if message and message.get("type") == "message":
                    data = message["data"]
                    job_id = data.decode() if isinstance(data, bytes) else str(data)
                    if state.request_cancel(job_id):
                        logger.info("job %s cancelled on request", job_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # an outage: the heartbeats still see the cancel flag
            delay = backoff.next_delay()
            outage.down(exc, delay)
            await asyncio.sleep(delay)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


async def _reach_events(spec: ServerSpec, wait_s: float) -> Any:
    """A client of the events server, once it answers PING (waiting up to `wait_s` for one
    that is not up yet, like the queue server); `WorkerConfigError` naming it otherwise."""
    events = connect_events(spec)
    try:
        await retrying(events.ping, deadline_s=wait_s)
    except Exception as exc:
        with contextlib.suppress(Exception):
            await events.aclose()
        raise WorkerConfigError(
            f"cannot reach the events server {spec} (events_url): {exc}"
        ) from None
    return events


class WorkerRuntime:
    """What one worker process serves, handed explicitly between arq's hooks, the job function
    and `StreamingWorker`'s claim (never through string keys of arq's `ctx`).

    `settings()` gives arq's `Worker` keyword arguments; its startup hook builds `state` (the
    pipeline, publisher and running jobs), its shutdown hook closes them, and its job function
    runs `run_query` with that state. Stock arq (`arq streaming_rag_worker.WorkerSettings`) and
    `StreamingWorker` use the same runtime.
    """

    def __init__(self, config: WorkerConfig, rag: StreamingRAG | None = None) -> None:
        self.config = config
        self._rag = rag
        self._state: WorkerState | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def state(self) -> WorkerState:
        """The process's `WorkerState`; raises RuntimeError before startup."""
        if self._state is None:
            raise RuntimeError("the worker has not started: its state is built at startup")
        return self._state

    async def startup(self, ctx: dict[str, Any]) -> None:
        """arq's `on_startup`: load the app, connect to the events server (when `events_url`
        names one apart from the queue server), start the publisher, the cancel listener and
        the sweep."""
        config = self.config
        app = self._rag if self._rag is not None else load_app(config.app)
        spec = config.events_server()
        events = None if spec is None else await _reach_events(spec, config.startup_wait_s)
        # the queue: arq's own pool, under arq's own key
        state = WorkerState(config, app, ctx["redis"], events)
        state.publisher.start()
        self._state = state
        await state.metrics.start(state.queue, config.prefix)  # GET /metrics, if configured
        sweep = sweep_forever(
            state.queue,
            state.redis if state.split else None,
            prefix=config.prefix,
            worker=config.name,
            interval_s=config.heartbeat_s,
            lease_ms=config.lease_ms,
            retention_ms=config.retention_ms,
        )
        self._tasks = [
            asyncio.create_task(_listen_for_cancels(state), name="streaming-rag-cancels"),
            asyncio.create_task(sweep, name="streaming-rag-sweep"),
        ]
        logger.info(
            "worker %s ready: prefix %r, queue %r, events %s, concurrency %d, app %s",
            config.name,
            config.prefix,
            queue_name(config.prefix),
            "on the queue server" if spec is None else str(spec),
            config.concurrency,
            repr(app),
        )

    async def shutdown(self, ctx: dict[str, Any]) -> None:
        """arq's `on_shutdown`: stop the cancel listener and the sweep, flush and stop the
        publisher."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._state is not None:
            await self._state.metrics.aclose()
            await self._state.heartbeats.aclose()
            await self._state.publisher.aclose()
            if self._state.split:
                with contextlib.suppress(Exception):
                    await self._state.redis.aclose()

    async def job(self, ctx: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        """The arq job function `JOB_FUNCTION`: answer one query; return its final status.
        Takes any arguments so that a record that does not fit ends its job with a typed
        ERROR instead of failing inside arq (see `run_record`)."""
        enqueued = ctx.get("enqueue_time")  # arq's documented ctx key (a datetime)
        queue_ms = None
        if isinstance(enqueued, datetime):
            queue_ms = max(0, round((datetime.now(UTC) - enqueued).total_seconds() * 1000))
        return await run_record(self.state, str(ctx["job_id"]), args, kwargs, queue_ms=queue_ms)

    def settings(self) -> dict[str, Any]:
        """Keyword arguments for `arq.worker.Worker` implementing the config."""
        config = self.config
        return {
            "functions": [func(self.job, name=JOB_FUNCTION, max_tries=1)],
            "queue_name": queue_name(config.prefix),
            "redis_settings": config.redis_settings(),
            "on_startup": self.startup,
            "on_shutdown": self.shutdown,
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
        }


def worker_kwargs(config: WorkerConfig, *, rag: StreamingRAG | None = None) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker` implementing `config` (for stock arq).

    `rag` serves a ready `StreamingRAG` instead of loading `config.app` at startup.
    """
    return WorkerRuntime(config, rag).settings()


def build_worker(
    config: WorkerConfig, *, rag: StreamingRAG | None = None, **overrides: Any
) -> StreamingWorker:
    """A `StreamingWorker` for `config` (`overrides` go straight to arq's `Worker`)."""
    runtime = WorkerRuntime(config, rag)
    return StreamingWorker(runtime, **{**runtime.settings(), **overrides})
