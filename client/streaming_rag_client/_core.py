"""The no-I/O core of the client: what to send, and what the answers mean.

Both twins (`_sync.SyncOps` on redis-py's sync client, `_async.AsyncOps` on its asyncio client)
drive these objects and do nothing but the I/O, so the two surfaces cannot drift apart.

Following a job (`Follower`):

1. First read from the cursor (``0-0``, or the `after` id given) with a blocking XREAD.
2. Every entry is decoded (strictly) into a `StreamEvent` with `id` set; the cursor moves on;
   the terminal event (GENERATION_DONE or ERROR) ends the iteration.
3. A read that returns nothing runs the CHECK script, whose verdict decides: `missing` → the
   job is unknown or expired (`JobNotFound`); `lost` / `withdrawn` → CHECK has just appended
   the terminal ERROR, read on; `queued` / `running` → wait on; a final status → one more
   non-blocking read, and if that is empty too the job ended at or before the cursor.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from streaming_rag import EventType, StreamEvent
from streaming_rag.exceptions import JobNotFound
from streaming_rag.wire import JobKeys, decode_entries, new_job_id, parse_request, validate_job_id
from streaming_rag.wire.models import arq_job_record

__all__ = [
    "FINAL_STATUSES",
    "Follower",
    "JobStatus",
    "StatsCounter",
    "SubmitPlan",
    "entry_id_key",
    "replay_delay",
]

FINAL_STATUSES = frozenset({"done", "failed", "cancelled"})


class JobStatus(StrEnum):
    """Where a job stands. `NOT_FOUND` for unknown or expired ids."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOT_FOUND = "not found"


def status_from_check(verdict: str) -> JobStatus:
    """Map a CHECK verdict to a `JobStatus`."""
    if verdict == "missing":
        return JobStatus.NOT_FOUND
    if verdict in ("lost", "withdrawn"):
        return JobStatus.FAILED
    return JobStatus(verdict)


@dataclass(frozen=True)
class SubmitPlan:
    """Everything one SUBMIT script call needs."""

    keys: JobKeys
    args: list[Any]

    @property
    def job_id(self) -> str:
        return self.keys.job_id

    @property
    def script_keys(self) -> list[str]:
        k = self.keys
        return [k.meta, k.events, k.arq_job, k.queue, k.wake]


def plan_submit(
    query: Any,
    context: Any,
    *,
    job_id: str | None,
    prefix: str,
    max_query_chars: int,
    start_timeout_s: float,
    retention_s: float,
) -> SubmitPlan:
    """Validate the request (raising `InvalidRequest`) and build the SUBMIT call."""
    request = parse_request(query, context, max_query_chars=max_query_chars)
    jid = validate_job_id(job_id) if job_id is not None else new_job_id()
    keys = JobKeys(prefix, jid)
    now_ms = int(time.time() * 1000)
    start_timeout_ms = int(start_timeout_s * 1000)
    record_ttl_ms = start_timeout_ms + int(retention_s * 1000)
    record = arq_job_record(jid, request, now_ms)
    return SubmitPlan(keys, [keys.arq_job_id, record, now_ms, start_timeout_ms, record_ttl_ms])


def check_keys(keys: JobKeys) -> list[str]:
    return [keys.meta, keys.lease, keys.events, keys.queue, keys.arq_job]


def cancel_keys(keys: JobKeys) -> list[str]:
    return [keys.meta, keys.events, keys.queue, keys.arq_job]


def stream_entries(response: Any) -> Any:
    """The entries of a single-stream raw XREAD reply (RESP2 list or RESP3 map), or raw
    XRANGE entries as they are."""
    if isinstance(response, dict):  # RESP3 XREAD: {stream: entries}
        return next(iter(response.values()), [])
    first = response[0]
    if len(first) == 2 and first[1] and isinstance(first[1][0], list | tuple):
        return first[1]  # XREAD: [[stream, [[id, fields], ...]]]
    return response


def entry_id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id `"<ms>-<seq>"` as a tuple that orders like the stream."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass
class Follower:
    """The state of following one job's stream: cursor, end, and what to do next."""

    keys: JobKeys
    cursor: str = "0-0"
    done: bool = False
    seen: int = 0
    final_seen: bool = False  # CHECK reported a final status: one last read decides

    @property
    def job_id(self) -> str:
        return self.keys.job_id

    def take(self, response: Any) -> list[StreamEvent]:
        """Decode a raw XREAD response (or raw XRANGE entries) for this job; stops after
        the terminal event."""
        if not response:
            return []
        events: list[StreamEvent] = decode_entries(self.job_id, stream_entries(response))
        if events:
            self.cursor = events[-1].id or self.cursor
            self.seen += len(events)
            self.done = events[-1].is_terminal
        return events

    def on_idle(self, verdict: str) -> None:
        """Digest a CHECK verdict after a read that returned nothing."""
        if verdict == "missing":
            raise JobNotFound(self.job_id, self.keys.prefix)
        if self.final_seen:
            self.done = True  # the final status was set and nothing follows the cursor
        elif verdict in FINAL_STATUSES:
            self.final_seen = True


@dataclass
class StatsCounter:
    """The spec's `stats` over the streams a client consumed (thread-safe)."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    streams: int = 0
    chunks: int = 0
    errors: int = 0
    completed: int = 0
    latency: float = 0.0

    def started(self) -> None:
        with self._lock:
            self.streams += 1

    def add_chunks(self, n: int) -> None:
        """Count `n` chunks at once (followers count locally and add when they end)."""
        if n:
            with self._lock:
                self.chunks += n

    def saw_page(self, events: list[StreamEvent]) -> None:
        """Count a page of events: chunks in one locked addition, others one by one."""
        chunks = 0
        for event in events:
            if event.type is EventType.CHUNK:
                chunks += 1
            else:
                self.saw(event)
        self.add_chunks(chunks)

    def saw(self, event: StreamEvent) -> None:
        t = event.type
        if t is EventType.CHUNK:
            with self._lock:
                self.chunks += 1
        elif t is EventType.ERROR:
            with self._lock:
                self.errors += 1
        elif t is EventType.GENERATION_DONE:
            with self._lock:
                self.completed += 1
                self.latency += float(event.data.get("total_latency", event.latency))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            done = self.completed
            return {
                "total_streams": self.streams,
                "total_chunks": self.chunks,
                "total_errors": self.errors,
                "avg_stream_latency_s": round(self.latency / done, 3) if done else 0.0,
            }


def replay_delay(event: StreamEvent, started: float, now: float, speed: float) -> float:
    """Seconds to wait before re-emitting `event` so it keeps its original pacing / `speed`.

    `started` is when the replay began (monotonic); `speed` 0 means no waiting at all.
    """
    if speed <= 0:
        return 0.0
    return max(0.0, started + event.latency / speed - now)
