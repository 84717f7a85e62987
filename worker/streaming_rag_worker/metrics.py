"""Prometheus metrics of one worker process (extra `metrics`: ``prometheus-client``).

Off unless `WorkerConfig.metrics_port` is set (`streaming-rag worker --metrics-port N`): the
worker then serves ``GET /metrics`` on `metrics_host` (default 127.0.0.1) from its own
`CollectorRegistry` (never the global one, so several workers in one process do not collide),
on the worker's event loop. The queue gauges are read from the queue server at scrape time.
Every metric is listed, with its meaning and a sample query, in docs/operations.md.

The job code calls the hooks of `WorkerState.metrics`: `NO_METRICS` (every hook a no-op) when
metrics are off. ``prometheus_client`` is imported only when a `WorkerMetrics` is built.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any

from streaming_rag.exceptions import EventDecodeError, WorkerConfigError
from streaming_rag.wire import decode_event

if TYPE_CHECKING:
    from .config import WorkerConfig

__all__ = [
    "INSTALL_HINT",
    "LATENCY_BUCKETS",
    "NO_METRICS",
    "Metrics",
    "WorkerMetrics",
    "current",
    "for_config",
    "require_prometheus",
]

logger = logging.getLogger("streaming_rag.worker")

INSTALL_HINT = 'metrics need prometheus-client: pip install "streaming-rag[metrics]"'

#: Seconds: from 1 ms to 2 minutes, dense in the milliseconds (pickup, first token, flushes).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
#: Events per publish flush (one pipeline round trip).
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
#: How many of the oldest queue entries a scrape looks at to tell waiting from running jobs.
QUEUE_WINDOW = 1000
#: How long a scrape waits for the queue server before serving the last values.
QUEUE_READ_TIMEOUT_S = 2.0


def require_prometheus() -> None:
    """Raise `WorkerConfigError` (one line, naming the extra) if prometheus-client is absent."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise WorkerConfigError(INSTALL_HINT) from None


class Metrics:
    """The hooks the worker calls; this base class records nothing (`NO_METRICS`)."""

    port: int | None = None

    def job_started(self, queue_ms: int | None) -> None:
        """A job passed START (its pickup latency, when known, in milliseconds)."""

    def job_ended(self, status: str, terminal: bytes | None = None) -> None:
        """A started job ended with `status`; `terminal` is its encoded terminal event."""

    def job_stopped(self) -> None:
        """A started job's run ended (any way): it is no longer active."""

    def event(self, type_: str) -> None:
        """The pipeline produced one non-terminal event of `type_` (handed to the publisher)."""

    def first_token(self, seconds: float) -> None:
        """The job's first CHUNK, `seconds` after the job started generating."""

    def flushed(self, events: int, started: float) -> None:
        """A publish flush of `events` events ended; it began at `perf_counter()` `started`."""

    def reconnected(self, what: str) -> None:
        """`what` reached Redis again after an outage."""

    async def start(self, queue: Any, prefix: str) -> None:
        """Serve `/metrics` (no-op here)."""

    async def aclose(self) -> None:
        """Stop serving `/metrics` (no-op here)."""


NO_METRICS = Metrics()
_current: contextvars.ContextVar[Metrics] = contextvars.ContextVar(
    "streaming_rag_worker_metrics", default=NO_METRICS
)


def current() -> Metrics:
    """The metrics of the worker running in this context (for code that has no `WorkerState`,
    such as `OutageLog`): set by `for_config`, inherited by the tasks started after."""
    return _current.get()


def for_config(config: WorkerConfig) -> Metrics:
    """`WorkerMetrics` when `config.metrics_port` is set, else `NO_METRICS`; either becomes
    this context's `current()` (the worker's startup: its tasks, created after, inherit it)."""
    chosen = (
        NO_METRICS
        if config.metrics_port is None
        else WorkerMetrics(port=config.metrics_port, host=config.metrics_host)
    )
    _current.set(chosen)
    return chosen


def _decode_stage(terminal: bytes | None) -> str:
    """The `stage` of an encoded ERROR event (either wire version), else ``""``."""
    if terminal is None:
        return ""
    try:
        data = decode_event("", "", terminal).data
    except EventDecodeError:
        return ""
    stage = data.get("stage") if isinstance(data, dict) else None
    return stage if isinstance(stage, str) else ""


class WorkerMetrics(Metrics):
    """The worker's metrics in a registry of its own (`registry`), served on `host`:`port`
    from `start()` (port 0: any free port, then `port` is the one bound)."""

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        require_prometheus()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.port = port
        self.host = host
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.queue_jobs = Gauge(
            "streaming_rag_queue_jobs",
            "Jobs in the arq queue: waiting, or running (arq keeps a job there until it ends)",
            registry=reg,
        )
        self.queue_waiting = Gauge(
            "streaming_rag_queue_waiting_jobs",
            "Jobs in the arq queue that no worker has claimed yet",
            registry=reg,
        )
        self.queue_oldest_age = Gauge(
            "streaming_rag_queue_oldest_waiting_age_seconds",
            "Age of the oldest job no worker has claimed yet (0 when none waits)",
            registry=reg,
        )
        self.pickup = Histogram(
            "streaming_rag_pickup_latency_seconds",
            "From submit (arq enqueue time) to the job's start on this worker",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "streaming_rag_ttft_seconds",
            "From the job's start of generation to its first CHUNK (time to first token)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "streaming_rag_tokens", "CHUNK events published (tokens)", registry=reg
        )
        self.events = Counter(
            "streaming_rag_events",
            "Non-terminal events published, by event type",
            ["type"],
            registry=reg,
        )
        self.active = Gauge(
            "streaming_rag_active_jobs", "Jobs running on this worker", registry=reg
        )
        self.jobs = Counter(
            "streaming_rag_jobs",
            "Jobs ended on this worker, by final status and the ERROR's stage ('' if none)",
            ["status", "stage"],
            registry=reg,
        )
        self.batch = Histogram(
            "streaming_rag_publish_batch_events",
            "Events written by one publish flush (one pipeline round trip)",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.round_trip = Histogram(
            "streaming_rag_publish_round_trip_seconds",
            "Duration of one publish flush (the PUBLISH pipeline's round trip to Redis)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.reconnects = Counter(
            "streaming_rag_redis_reconnects",
            "Redis outages ended (reconnected), by the component that saw the outage: job "
            "pickup, publishing events, cancel listener, sweep",
            ["component"],
            registry=reg,
        )
        self._queue: Any = None
        self._queue_name = ""
        self._server: asyncio.Server | None = None
        self._scraping: asyncio.Lock | None = None

    # -- hooks ------------------------------------------------------------------------------

    def job_started(self, queue_ms: int | None) -> None:
        self.active.inc()
        if queue_ms is not None:
            self.pickup.observe(max(0, queue_ms) / 1000)

    def job_ended(self, status: str, terminal: bytes | None = None) -> None:
        stage = _decode_stage(terminal) if status in ("failed", "cancelled") else ""
        self.jobs.labels(status=status, stage=stage).inc()

    def job_stopped(self) -> None:
        self.active.dec()

    def event(self, type_: str) -> None:
        self.events.labels(type=type_).inc()
        if type_ == "chunk":
            self.tokens.inc()

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def flushed(self, events: int, started: float) -> None:
        self.batch.observe(events)
        self.round_trip.observe(time.perf_counter() - started)

    def reconnected(self, what: str) -> None:
        component = "job pickup" if what.startswith("worker ") else what  # not its name
        self.reconnects.labels(component=component).inc()

    # -- serving ----------------------------------------------------------------------------

    async def start(self, queue: Any, prefix: str) -> None:
        """Serve ``GET /metrics`` on `host`:`port`, reading the queue gauges from `queue` (the
        queue server's client) at each scrape."""
        from streaming_rag.wire.keys import queue_name

        self._queue, self._queue_name = queue, queue_name(prefix)
        self._scraping = asyncio.Lock()
        self._server = await asyncio.start_server(self._serve, self.host, self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def refresh_queue(self) -> None:
        """Read the queue gauges from the queue server (bounded by `QUEUE_READ_TIMEOUT_S`;
        on failure the last values stay)."""
        if self._queue is None or self._scraping is None:
            return
        async with self._scraping:
            try:
                await asyncio.wait_for(self._read_queue(), QUEUE_READ_TIMEOUT_S)
            except Exception as exc:
                logger.debug("metrics: cannot read the queue (%s)", exc)

    async def _read_queue(self) -> None:
        from streaming_rag.wire.keys import ARQ_IN_PROGRESS_KEY_PREFIX

        queue, name = self._queue, self._queue_name
        async with queue.pipeline(transaction=False) as pipe:
            pipe.zcard(name)
            pipe.zrange(name, 0, QUEUE_WINDOW - 1, withscores=True)
            total, head = await pipe.execute()
        ids = [m.decode() if isinstance(m, bytes) else str(m) for m, _ in head]
        running: list[Any] = []
        if ids:
            async with queue.pipeline(transaction=False) as pipe:
                for arq_id in ids:
                    pipe.exists(ARQ_IN_PROGRESS_KEY_PREFIX + arq_id)
                running = await pipe.execute()
        now_ms = time.time() * 1000
        oldest = None
        waiting = int(total) - len(ids)  # beyond the window: newer than it, taken as waiting
        for (_, score), busy in zip(head, running, strict=True):
            if not busy:
                waiting += 1
                if oldest is None:
                    oldest = float(score)
        self.queue_jobs.set(int(total))
        self.queue_waiting.set(waiting)
        self.queue_oldest_age.set(0 if oldest is None else max(0.0, now_ms - oldest) / 1000)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One HTTP/1.0-style exchange: ``GET /metrics`` → the exposition, else 404/405."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            lines = request.decode("latin-1").split("\r\n")
            method, target, *_ = [*lines[0].split(" "), "", ""]
            headers = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            )
            path = target.split("?", 1)[0]
            if path != "/metrics":
                status, ctype, body = "404 Not Found", "text/plain", b"not found: try /metrics\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            else:
                from prometheus_client.exposition import choose_encoder

                await self.refresh_queue()
                encoder, ctype = choose_encoder(headers.get("accept", ""))
                status, body = "200 OK", encoder(self.registry)
                if method == "HEAD":
                    body = b""
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
