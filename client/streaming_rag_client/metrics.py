"""Prometheus metrics of the HTTP bridge (extra `metrics`: ``prometheus-client``): its SSE
connections and the messages they deliver.

`create_app(metrics=True)` (or a `BridgeMetrics`) records them in a registry of the app's own
(`app.state.metrics.registry`); `streaming-rag serve --metrics-port N` serves it on
``http://127.0.0.1:N/metrics``, a port apart from the bridge's, so the bridge's public address
never exposes it. Embedding the bridge in an app of yours, serve the registry where only your
scraper reaches it, e.g. ``prometheus_client.make_asgi_app(app.state.metrics.registry)`` on an
internal port, or `BridgeMetrics.serve`. Every metric is listed in docs/operations.md.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from streaming_rag import EventType, StreamEvent

__all__ = ["INSTALL_HINT", "BridgeMetrics"]

INSTALL_HINT = 'metrics need prometheus-client: pip install "streaming-rag[metrics]"'

#: Subscribers (open SSE streams) of one job.
SUBSCRIBER_BUCKETS = (1, 2, 3, 5, 10, 20, 50, 100, 500, 1000)


class BridgeMetrics:
    """The bridge's metrics, in `registry` (a new `CollectorRegistry` unless given)."""

    def __init__(self, registry: Any = None) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        reg = self.registry
        self._per_job: dict[str, int] = {}
        self.streams = Gauge(
            "streaming_rag_sse_streams", "SSE event streams open on the bridge", registry=reg
        )
        self.opened = Counter(
            "streaming_rag_sse_streams_opened", "SSE event streams opened", registry=reg
        )
        self.jobs = Gauge(
            "streaming_rag_sse_watched_jobs",
            "Jobs with at least one open SSE stream",
            registry=reg,
        )
        self.jobs.set_function(lambda: len(self._per_job))
        self.max_subscribers = Gauge(
            "streaming_rag_sse_max_subscribers_per_job",
            "The most SSE streams open on one job right now",
            registry=reg,
        )
        self.max_subscribers.set_function(lambda: max(self._per_job.values(), default=0))
        self.subscribers = Histogram(
            "streaming_rag_sse_subscribers_per_job",
            "Subscribers of the job (its open SSE streams, this one included) as a stream opens",
            buckets=SUBSCRIBER_BUCKETS,
            registry=reg,
        )
        self.messages = Counter(
            "streaming_rag_sse_messages",
            "Event messages handed to SSE streams, by event type",
            ["type"],
            registry=reg,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    async def watched(
        self, job_id: str, events: AsyncGenerator[StreamEvent, None]
    ) -> AsyncGenerator[StreamEvent, None]:
        """`events` of `job_id`, counted: the stream is open from the first read to the close,
        and each event is a delivered message. Closing this closes `events`."""
        self._opened(job_id)
        try:
            async for event in events:
                self.messages.labels(type=str(event.type)).inc()
                yield event
        finally:
            self._closed(job_id)
            await events.aclose()

    async def watched_pages(
        self, job_id: str, pages: AsyncGenerator[Sequence[StreamEvent], None]
    ) -> AsyncGenerator[Sequence[StreamEvent], None]:
        """`watched` for pages of events (`_fanout_pages.follow_pages`): each event of a page
        is a delivered message (chunks counted once per page). Closing this closes `pages`."""
        self._opened(job_id)
        chunks = self.messages.labels(type=str(EventType.CHUNK))
        try:
            async for page in pages:
                n = 0
                for event in page:
                    if event.type is EventType.CHUNK:
                        n += 1
                    else:
                        self.messages.labels(type=str(event.type)).inc()
                if n:
                    chunks.inc(n)
                yield page
        finally:
            self._closed(job_id)
            await pages.aclose()

    def _opened(self, job_id: str) -> None:
        count = self._per_job.get(job_id, 0) + 1
        self._per_job[job_id] = count
        self.streams.inc()
        self.opened.inc()
        self.subscribers.observe(count)

    def _closed(self, job_id: str) -> None:
        self.streams.dec()
        left = self._per_job.get(job_id, 1) - 1
        if left > 0:
            self._per_job[job_id] = left
        else:
            self._per_job.pop(job_id, None)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``GET /metrics`` on `host`:`port` (prometheus-client's server, in a thread);
        returns the port bound (`port` 0: any free port). Stop with `close()`."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop what `serve` started."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
