"""OpenTelemetry spans for jobs (extra `otel`, i.e. `opentelemetry-api`; see docs/operations.md,
"Traces").

Each started job gets a span `streaming_rag.job` (kind CONSUMER), a child of the trace context
its client put in the request (`JobRequest.trace`, a W3C carrier) or a root span without one,
starting at the job's enqueue time. Its children: `streaming_rag.queue_wait` (enqueue to start),
`streaming_rag.retrieval` and `streaming_rag.generation` (delimited by the events the pipeline
yields: RETRIEVAL_START/DONE, GENERATION_START, the terminal event; `first_token` is an event of
the generation span at the first CHUNK) and `streaming_rag.publish` (from the job's first event
handed to the publisher until its terminal event is written). No span per token.

Nothing here imports OpenTelemetry unless the process already did (`opentelemetry.trace` in
`sys.modules`: a process with a tracer provider configured has): otherwise every hook is a
no-op, and so it is with the API's default no-op provider.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from streaming_rag.wire import JobKeys

__all__ = ["TRACER_NAME", "JobTrace", "current", "job_trace"]

#: The instrumentation scope of every span of this package (and of the bridge's).
TRACER_NAME = "streaming_rag"

_ERROR_STATUSES = frozenset({"failed", "lost", "stopped"})

logger = logging.getLogger("streaming_rag.worker")
_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(method: _F) -> _F:
    """Tracing never fails a job: an error in a hook is logged (at DEBUG) and ignored."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            logger.debug("tracing hook %s failed", method.__name__, exc_info=True)

    return guarded  # type: ignore[return-value]


class JobTrace:
    """The hooks `job.py` calls; this base does nothing (no OpenTelemetry, or no job)."""

    def started(self) -> None:
        """The job was started (START said ok): the queue wait ends, the job span opens."""

    def event(self, kind: str, data: Any = None) -> None:
        """The pipeline yielded an event of type `kind` (called in the pump, before it is
        published)."""

    def end(self, status: str) -> None:
        """The job ended with `status` (its terminal event written, or not: `lost`,
        `stopped`)."""


_NOOP = JobTrace()
_CURRENT: contextvars.ContextVar[JobTrace] = contextvars.ContextVar(
    "streaming_rag_job_trace", default=_NOOP
)


def current() -> JobTrace:
    """The running job's `JobTrace` (the no-op one outside `job_trace`)."""
    return _CURRENT.get()


def _otel() -> Any | None:
    """`opentelemetry.trace` when the process imported it, else None (cheap)."""
    return sys.modules.get("opentelemetry.trace")


def carrier_of(request: Any) -> dict[str, str] | None:
    """The W3C trace carrier of a job payload (leniently: the payload is validated later)."""
    trace = request.get("trace") if isinstance(request, dict) else None
    if not isinstance(trace, dict):
        return None
    return {k: v for k, v in trace.items() if isinstance(k, str) and isinstance(v, str)} or None


class _Spans(JobTrace):
    def __init__(
        self, otel: Any, keys: JobKeys, worker: str, carrier: dict[str, str] | None, queue_ms: Any
    ) -> None:
        from opentelemetry import context, propagate

        self._otel = otel
        self._context = context
        self._tracer = otel.get_tracer(TRACER_NAME)
        self._parent = propagate.extract(carrier) if carrier else context.Context()
        now = time.time_ns()
        self._queue_ms = queue_ms if isinstance(queue_ms, int) and queue_ms >= 0 else None
        self._enqueued_ns = None if self._queue_ms is None else now - self._queue_ms * 1_000_000
        self._attributes: dict[str, Any] = {
            "streaming_rag.job_id": keys.job_id,
            "streaming_rag.prefix": keys.prefix,
            "streaming_rag.worker": worker,
        }
        self.span: Any = None
        self._job_ctx: Any = None
        self._token: Any = None
        self._phase: Any = None  # the open retrieval or generation span
        self._phase_name = ""
        self._phase_token: Any = None
        self._publish: Any = None
        self._chunks = 0

    @_guarded
    def started(self) -> None:
        otel, attrs = self._otel, dict(self._attributes)
        if self._queue_ms is not None:
            attrs["streaming_rag.queue_ms"] = self._queue_ms
        self.span = self._tracer.start_span(
            "streaming_rag.job",
            context=self._parent,
            kind=otel.SpanKind.CONSUMER,
            attributes=attrs,
            start_time=self._enqueued_ns,
        )
        self._job_ctx = otel.set_span_in_context(self.span, self._parent)
        if self._enqueued_ns is not None:
            wait = self._tracer.start_span(
                "streaming_rag.queue_wait", context=self._job_ctx, start_time=self._enqueued_ns
            )
            wait.end()
        # the job span is current in the job's task and in the pump task (which copies it), so
        # spans of instrumented libraries (an LLM client, ...) nest under the job
        self._token = self._context.attach(self._job_ctx)

    def _child(self, name: str, **attributes: Any) -> Any:
        return self._tracer.start_span(name, context=self._job_ctx, attributes=attributes)

    def _open_phase(self, name: str) -> None:
        self._close_phase(detach=True)
        self._phase, self._phase_name = self._child(name), name
        ctx = self._otel.set_span_in_context(self._phase, self._job_ctx)
        self._phase_token = self._context.attach(ctx)

    def _close_phase(self, *, detach: bool, error: str | None = None) -> None:
        if self._phase is None:
            return
        phase, self._phase = self._phase, None
        token, self._phase_token = self._phase_token, None
        if detach and token is not None:
            self._context.detach(token)
        if self._phase_name == "streaming_rag.generation":
            phase.set_attribute("streaming_rag.chunks", self._chunks)
        if error is not None:
            phase.set_status(self._otel.Status(self._otel.StatusCode.ERROR, error))
        phase.end()

    @_guarded
    def event(self, kind: str, data: Any = None) -> None:
        if self.span is None:
            return
        if self._publish is None:
            self._publish = self._child("streaming_rag.publish")
        if kind == "retrieval_start":
            self._open_phase("streaming_rag.retrieval")
        elif kind == "retrieval_done":
            if self._phase is not None and isinstance(data, dict):
                num_docs = data.get("num_docs")
                if isinstance(num_docs, int):
                    self._phase.set_attribute("streaming_rag.num_docs", num_docs)
            self._close_phase(detach=True)
        elif kind == "generation_start":
            self._open_phase("streaming_rag.generation")
        elif kind == "chunk":
            self._chunks += 1
            if self._chunks == 1 and self._phase is not None:
                self._phase.add_event("first_token")
        elif kind in ("generation_done", "error"):
            msg = data.get("msg") if kind == "error" and isinstance(data, dict) else None
            self._close_phase(detach=True, error=None if msg is None else str(msg))

    @_guarded
    def end(self, status: str) -> None:
        if self.span is None:
            return
        # a phase still open here was cut short (cancelled, worker stopped): the pump task that
        # attached it is gone with its context, so it is not detached here
        self._close_phase(detach=False, error=status if status in _ERROR_STATUSES else None)
        if self._publish is not None:
            self._publish.end()
        self.span.set_attribute("streaming_rag.status", status)
        if status in _ERROR_STATUSES:
            self.span.set_status(self._otel.Status(self._otel.StatusCode.ERROR, status))
        self.span.end()
        if self._token is not None:
            self._context.detach(self._token)
            self._token = None
        self.span = None


@contextlib.contextmanager
def job_trace(keys: JobKeys, worker: str, request: Any, queue_ms: Any) -> Iterator[JobTrace]:
    """The `JobTrace` of one job, `current()` inside; ends it as `stopped` if `end` was not
    called (an exception, the worker shutting down)."""
    otel = _otel()
    if otel is None:
        yield _NOOP
        return
    try:
        trace = _Spans(otel, keys, worker, carrier_of(request), queue_ms)
    except Exception:  # tracing never fails a job
        logger.debug("tracing job %s failed", keys.job_id, exc_info=True)
        yield _NOOP
        return
    reset = _CURRENT.set(trace)
    try:
        yield trace
    finally:
        trace.end("stopped")
        _CURRENT.reset(reset)
