"""The arq job function: one query in, every event out to the job's Redis Stream.

Lifecycle of one job on a worker:

1. START script: `queued` → `running` and the lease is taken. A job that was withdrawn or
   cancelled while queued (or is unknown) is skipped.
2. The pipeline's `astream_events` runs in a task; each event is encoded and handed to the
   `Publisher` as it comes (order kept). The process's `Heartbeats` refresh the lease of every
   running job every `heartbeat_s` in one round trip and watch for a cancellation flag; the
   worker's pub/sub listener delivers cancellations at once.
3. The terminal event ends the job: GENERATION_DONE → `done`, ERROR → `failed`. Synthetic
   terminal events written here: cancellation → ERROR {"stage": "generation", "msg":
   "Cancelled"} (`cancelled`), or "Abandoned: nobody watching" when `abandon_after_s` cancelled it
   (`abandon`); the event cap → ERROR {"stage": "generation"} (`failed`); an
   exception escaping the pipeline (e.g. a callback) → ERROR {"stage": "worker"}; worker
   shutdown → ERROR {"stage": "worker", "msg": "Worker shut down"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from streaming_rag import EventType, StreamingRAG
from streaming_rag.exceptions import InvalidRequest
from streaming_rag.wire import JobKeys, encode_event
from streaming_rag.wire.models import JOB_FUNCTION, request_from_payload
from streaming_rag.wire.scripts import START, start_call

from . import metrics, tracing, usage
from ._retry import retrying
from .abandon import ABANDONED_MSG
from .config import WorkerConfig
from .heartbeats import Heartbeats
from .publisher import JobLost, Publisher

__all__ = [
    "ABANDONED_MSG",
    "CANCELLED_MSG",
    "JOB_FUNCTION",
    "SHUTDOWN_MSG",
    "WorkerState",
    "end_invalid",
    "run_query",
    "run_record",
]

logger = logging.getLogger("streaming_rag.worker")
job_log = logging.getLogger("streaming_rag.jobs")

CANCELLED_MSG = "Cancelled"
SHUTDOWN_MSG = "Worker shut down"

_FINAL_STATUS = {EventType.GENERATION_DONE: "done", EventType.ERROR: "failed"}


class _Cancelled(Exception):
    """Raised into the pump when the job was cancelled or lost its ownership."""


class WorkerState:
    """Per-process state shared by every job: config, pipeline, publisher, running jobs.

    `queue` is the queue server's client (arq's pool); `redis` is the events server's, where
    every per-job key lives (the same client unless `events_url` names another server; then
    `split` is True and no script may touch both).
    """

    def __init__(
        self, config: WorkerConfig, rag: StreamingRAG, queue: Any, events: Any = None
    ) -> None:
        self.config = config
        self.rag = rag
        self.queue = queue
        self.redis = queue if events is None else events
        self.split = events is not None
        redis = self.redis
        self.metrics = metrics.for_config(config)
        self.publisher = Publisher(
            redis,
            lease_ms=config.lease_ms,
            retention_ms=config.retention_ms,
            flush_ms=config.flush_ms,
        )
        self.publisher.metrics = self.metrics
        self.start_script = redis.register_script(START)
        self.heartbeats = Heartbeats(
            redis, config, on_cancel=self._cancel_here, is_running=self._pump_runs
        )
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.cancel_requested: set[str] = set()
        self.abandoned: set[str] = set()  # cancelled by `abandon_after_s`: nobody watched
        # START verdicts of jobs the worker's CLAIM script already started (job id -> verdict)
        self._started: dict[str, str] = {}

    def claimed(self, job_id: str, verdict: str) -> None:
        """Hand over from the claim to the job: CLAIM already ran START for `job_id`."""
        self._started[job_id] = verdict

    def take_start_verdict(self, job_id: str) -> str | None:
        """The START verdict CLAIM left for `job_id` (once), or None if the job was not
        claimed by `StreamingWorker` (the job function must run START itself)."""
        return self._started.pop(job_id, None)

    def _cancel_here(self, job_id: str, abandoned: bool) -> None:
        if abandoned:
            self.abandoned.add(job_id)
        self.request_cancel(job_id)

    def _pump_runs(self, job_id: str) -> bool:
        pump = self.running.get(job_id)
        return pump is not None and not pump.done()

    def request_cancel(self, job_id: str) -> bool:
        """Cancel a job running in this process; False if it does not run here."""
        task = self.running.get(job_id)
        if task is None or task.done():
            return False
        self.cancel_requested.add(job_id)
        task.cancel()
        return True


async def _pump(
    state: WorkerState, keys: JobKeys, query: str, context: Any, used: usage.Usage
) -> tuple[bytes, str]:
    """Publish every event; return the encoded terminal event and the final status. CHUNK
    events are counted into `used`."""
    publisher, cap = state.publisher, state.config.max_events
    count = 0
    t0 = time.perf_counter()
    trace = tracing.current()
    async with contextlib.aclosing(state.rag.astream_events(query, context)) as events:
        async for event in events:
            trace.event(event.type, event.data)
            payload = encode_event(event.type, event.data, event.latency)
            final = _FINAL_STATUS.get(event.type)
            if final is not None:
                return payload, final
            count += 1
            if event.type is EventType.CHUNK:
                used.chunks += 1
                if used.chunks == 1:
                    state.metrics.first_token(time.perf_counter() - t0)
            if count >= cap:
                msg = f"Event limit reached: the job produced more than {cap} events"
                latency = round(time.perf_counter() - t0, 4)
                return encode_event(
                    EventType.ERROR, {"msg": msg, "stage": "generation"}, latency
                ), "failed"
            state.metrics.event(str(event.type))
            await publisher.publish(keys, payload)
    msg = "the pipeline ended without a terminal event"  # pragma: no cover - spec forbids it
    return encode_event(EventType.ERROR, {"msg": msg, "stage": "worker"}, 0.0), "failed"


async def _start(state: WorkerState, keys: JobKeys) -> str:
    """The job's START verdict: the one CLAIM left, or START run here (stock arq, or the events
    on another server than the queue). START is idempotent for one worker, so it is retried
    through an outage of up to one lease."""
    started = state.take_start_verdict(keys.job_id)
    if started is None:  # CLAIM did not start it: START it here
        cfg = state.config
        call = start_call(keys, lease_ms=cfg.lease_ms, worker=cfg.name)
        verdict = await retrying(
            lambda: state.start_script(keys=call.keys, args=call.args),
            deadline_s=max(cfg.lease_s, 5.0),
        )
        started = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
    return started


async def _finish(state: WorkerState, keys: JobKeys, terminal: bytes, status: str) -> bool:
    """`Publisher.finish`, counted in the metrics by final status (`lost` when not written)."""
    written = await state.publisher.finish(keys, terminal, status)
    state.metrics.job_ended(status if written else "lost", terminal)
    return written


def _error(t0: float, stage: str, msg: str) -> bytes:
    latency = round(time.perf_counter() - t0, 4)
    return encode_event(EventType.ERROR, {"msg": msg, "stage": stage}, latency)


async def end_invalid(state: WorkerState, keys: JobKeys, reason: str) -> str:
    """End a job whose queue record cannot be run with one ERROR {"stage": "queue", "msg":
    "invalid job payload: <reason>"} (starting it first if needed). Returns its status."""
    logger.warning("job %s: invalid job payload (%s); ending it", keys.job_id, reason)
    started = await _start(state, keys)
    if started != "ok":
        return started
    error = _error(time.perf_counter(), "queue", f"invalid job payload: {reason}")
    written = await _finish(state, keys, error, "failed")
    return "failed" if written else "lost"


async def run_record(
    state: WorkerState,
    arq_job_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    queue_ms: int | None = None,
) -> str:
    """The arq job function `JOB_FUNCTION`, tolerant of any record: arguments that do not fit
    (a client of another version, a hand-made record) end the job with a typed ERROR when its
    id can be recovered from the arq job id, and are logged and dropped otherwise."""
    keys = JobKeys.from_arq_job_id(state.config.prefix, arq_job_id)
    extra = sorted(set(kwargs) - {"job_id", "request"})
    problem = ""
    if args:
        problem = f"{len(args)} unexpected positional argument(s)"
    elif extra:
        problem = f"unexpected argument(s) {', '.join(extra)}: is the client newer than the worker?"
    elif keys is None or kwargs.get("job_id") != keys.job_id:
        problem = f"job_id {kwargs.get('job_id')!r} does not match the arq job id"
    if not problem:
        assert keys is not None
        return await run_query(state, keys, kwargs.get("request"), queue_ms=queue_ms)
    if keys is None:
        logger.warning("dropped arq job %r: %s (not a job of this prefix)", arq_job_id, problem)
        return "invalid"
    return await end_invalid(state, keys, problem)


def log_job(keys: JobKeys, worker: str, status: str, **timings: float | int) -> None:
    """One structured line per job state change on logger ``streaming_rag.jobs``: the message
    reads well as text, and the fields (``job_id``, ``status``, ``worker`` and the timings in
    milliseconds) are record attributes that a JSON formatter (`--log-format json`) emits."""
    details = "".join(f", {name} {value}" for name, value in timings.items())
    job_log.info(
        "job %s %s on %s%s",
        keys.job_id,
        status,
        worker,
        details,
        extra={"job_id": keys.job_id, "status": status, "worker": worker, **timings},
    )


async def run_query(
    state: WorkerState, keys: JobKeys, request: Any, *, queue_ms: int | None = None
) -> str:
    """Answer one query onto the job's stream. Returns the job's final status. `queue_ms`
    (how long the job waited to be picked up) goes into the job's structured log lines and
    dates the start of its trace span (`tracing`)."""
    with tracing.job_trace(keys, state.config.name, request, queue_ms) as trace:
        status = await _run_query(state, keys, request, queue_ms=queue_ms)
        trace.end(status)
        return status


async def _run_query(
    state: WorkerState, keys: JobKeys, request: Any, *, queue_ms: int | None = None
) -> str:
    job_id = keys.job_id
    started = await _start(state, keys)
    if started != "ok":
        logger.info("job %s not started: it is %s", job_id, started)
        return started
    tracing.current().started()
    t0 = time.perf_counter()
    worker = state.config.name
    log_job(keys, worker, "running", **({} if queue_ms is None else {"queue_ms": queue_ms}))
    state.metrics.job_started(queue_ms)
    try:
        status = await _answer(state, keys, request, t0)
    except BaseException:
        log_job(keys, worker, "stopped", duration_ms=round((time.perf_counter() - t0) * 1000))
        raise
    finally:
        state.metrics.job_stopped()
    log_job(keys, worker, status, duration_ms=round((time.perf_counter() - t0) * 1000))
    return status


async def _answer(state: WorkerState, keys: JobKeys, request: Any, t0: float) -> str:
    """The body of `run_query` once the job is started: the pump, heartbeat and the end."""
    job_id = keys.job_id

    def error(stage: str, msg: str) -> bytes:
        return _error(t0, stage, msg)

    try:
        req = request_from_payload(request)
    except InvalidRequest as exc:
        await _finish(state, keys, error("queue", f"invalid job payload: {exc}"), "failed")
        return "failed"

    ctx, used = usage.scope()
    pump = asyncio.create_task(_pump(state, keys, req.query, req.context, used), context=ctx)
    state.running[job_id] = pump
    state.heartbeats.add(keys)
    terminal: bytes
    status: str
    try:
        try:
            terminal, status = await asyncio.shield(pump)
        except asyncio.CancelledError:
            if pump.cancelled() and job_id in state.cancel_requested:
                msg = ABANDONED_MSG if job_id in state.abandoned else CANCELLED_MSG
                terminal, status = error("generation", msg), "cancelled"
            else:  # the worker is shutting down (arq cancelled this job)
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
                await asyncio.shield(_finish(state, keys, error("worker", SHUTDOWN_MSG), "failed"))
                raise
        except JobLost:
            logger.warning("job %s was taken from this worker (lease lost); stopping", job_id)
            state.metrics.job_ended("lost")
            return "lost"
        except Exception as exc:
            logger.exception("job %s: the pipeline raised", job_id)
            terminal, status = error("worker", str(exc) or type(exc).__name__), "failed"
        # usage first: whoever sees the terminal event finds it in the job hash
        await asyncio.shield(usage.record(state.redis, keys, used, status, llm=state.rag.llm))
        written = await asyncio.shield(_finish(state, keys, terminal, status))
        return status if written else "lost"
    finally:
        state.heartbeats.discard(job_id)
        state.running.pop(job_id, None)
        state.cancel_requested.discard(job_id)
        state.abandoned.discard(job_id)
