"""`StreamStats`: the spec's `stats` counters, one type for the in-process `StreamingRAG` and
the queue client (`streaming_rag_client.StreamingRAGClient`), so both report the same keys
with the same meaning.

Thread-safe: a sync bridge thread, the event loop and a client's fan-out may count at once.
Hot paths count chunks locally and add them once (`add_chunks`), so no lock is taken per chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

from ._events import EventType, StreamEvent

__all__ = ["StreamStats"]

_type_of = attrgetter("type")


class StreamStats:
    """Cumulative counters since construction.

    `snapshot()` gives the spec's dict: ``total_streams``, ``total_chunks``, ``total_errors``
    and ``avg_stream_latency_s`` (the mean ``total_latency`` of completed streams, those that
    reached GENERATION_DONE, rounded to 3 decimals; ``0.0`` before any).
    """

    __slots__ = ("_chunks", "_completed", "_errors", "_latency", "_lock", "_streams")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams = 0
        self._chunks = 0
        self._errors = 0
        self._completed = 0
        self._latency = 0.0

    def started(self) -> None:
        """A stream started."""
        with self._lock:
            self._streams += 1

    def add_chunks(self, n: int) -> None:
        """Count `n` chunks at once."""
        if n:
            with self._lock:
                self._chunks += n

    def errored(self) -> None:
        """A stream ended with an ERROR event."""
        with self._lock:
            self._errors += 1

    def completed(self, total_latency: float) -> None:
        """A stream reached GENERATION_DONE after `total_latency` seconds."""
        with self._lock:
            self._completed += 1
            self._latency += total_latency

    def saw(self, event: StreamEvent) -> None:
        """Count one event observed by a consumer (the client's side of the counters)."""
        t = event.type
        if t is EventType.CHUNK:
            self.add_chunks(1)
        elif t is EventType.ERROR:
            self.errored()
        elif t is EventType.GENERATION_DONE:
            self.completed(float(event.data.get("total_latency", event.latency)))

    def saw_page(self, events: Iterable[StreamEvent]) -> None:
        """Count a page of events: chunks in one locked addition (counted by a C-level pass
        over the types), the others one by one."""
        page = events if isinstance(events, list) else list(events)
        chunks = list(map(_type_of, page)).count(EventType.CHUNK)
        if chunks != len(page):
            for event in page:
                if event.type is not EventType.CHUNK:
                    self.saw(event)
        self.add_chunks(chunks)

    def snapshot(self) -> dict[str, Any]:
        """The spec's `stats` dict (see the class docstring)."""
        with self._lock:
            done = self._completed
            return {
                "total_streams": self._streams,
                "total_chunks": self._chunks,
                "total_errors": self._errors,
                "avg_stream_latency_s": round(self._latency / done, 3) if done else 0.0,
            }
