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
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func

from streaming_rag import StreamingRAG
from streaming_rag.wire import pack_job, unpack_job
from streaming_rag.wire.keys import cancel_channel, queue_name, wake_key

from .app import load_app
from .config import WorkerConfig
from .job import JOB_FUNCTION, WorkerState, run_query
from .streaming_worker import StreamingWorker

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


def build_worker(
    config: WorkerConfig, *, rag: StreamingRAG | None = None, **overrides: Any
) -> StreamingWorker:
    """A `StreamingWorker` for `config` (`overrides` go straight to arq's `Worker`)."""
    return StreamingWorker(**{**worker_kwargs(config, rag=rag), **overrides})
