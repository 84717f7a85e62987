"""The no-I/O core of the client: what to send, and what the answers mean.

Both twins (`_transport.SyncTransport` on redis-py's sync client, `_transport.AsyncTransport`
on its asyncio client) do nothing but the I/O; `follow` / `afollow` and the fan-out
(`_fanout.Fanout`, for its subscribers and for each stream its shared reader follows) drive the
same `Follower` state machine, so the surfaces cannot drift apart. `tests/test_client_core.py`
drives it through a fake transport, without a server.

Following a job (`Follower`):

1. First read from the cursor (``0-0``, or the `after` id given) with a blocking XREAD.
2. Every entry is decoded (strictly) into a `StreamEvent` with `id` set; the cursor moves on;
   the terminal event (GENERATION_DONE or ERROR) ends the iteration. Reads ask for
   `READ_COUNT` entries; after a page that came back full (a backlog: a finished job's
   replay, a late subscriber) for `REPLAY_COUNT` (no extra round trip: the next read just
   asks for that many; equal to `READ_COUNT` now, see there).
3. A read that returns nothing runs the CHECK script, whose verdict decides: `missing` → the
   job is unknown or expired (`JobNotFound`); `lost` / `withdrawn` → CHECK has just appended
   the terminal ERROR, read on; `queued` / `running` → wait on; a final status → one more
   non-blocking read, and if that is empty too the job ended at or before the cursor.

Outages are the transports' business: each call is retried from the same cursor (see
`_transport`), so the state machine never sees them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import chain
from typing import Any, Protocol

from streaming_rag import StreamEvent
from streaming_rag.exceptions import InvalidRequest, JobNotFound
from streaming_rag.stats import StreamStats
from streaming_rag.wire import JobKeys, decode_entries, new_job_id, parse_request, validate_job_id
from streaming_rag.wire.models import arq_job_record
from streaming_rag.wire.scripts import ScriptCall, enqueue_call, submit_call

__all__ = [
    "ENDED_NOW",
    "FINAL_STATUSES",
    "READ_COUNT",
    "REPLAY_COUNT",
    "AsyncReads",
    "Follower",
    "JobDetails",
    "JobStatus",
    "USAGE_FIELDS",
    "SyncReads",
    "SubmitPlan",
    "afollow",
    "cancel_succeeded",
    "details_from_fields",
    "entry_id_key",
    "follow",
    "flatten",
    "follow_pages",
    "replay_delay",
]

#: Entries a read asks for at first (and the fan-out's reads always).
READ_COUNT = 1000
#: Entries a follower's read asks for once a page came back full: a backlog to catch up on.
#: Kept at `READ_COUNT`: bigger pages were measured slower on one machine (a sync replay of
#: 10,000 events, alternating runs: pages of 1,000 ran at 346k-423k events/s, of 2,000 at
#: 205k-226k; counted instructions per event +2 % at 2,000 and +8 % at 5,000, the garbage
#: collector traversing the bigger page's young objects more often). Raise it only where
#: round trips are dear (a distant server).
REPLAY_COUNT = READ_COUNT
FINAL_STATUSES = frozenset({"done", "failed", "cancelled"})
#: CHECK verdicts meaning "this call has just appended the job's terminal ERROR".
ENDED_NOW = frozenset({"lost", "withdrawn"})


class JobStatus(StrEnum):
    """Where a job stands. `NOT_FOUND` for unknown or expired ids."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    NOT_FOUND = "not found"


#: The job-hash fields a worker records as a job ends (``streaming_rag_worker.usage``), in the
#: order `details_from_fields` reads them.
USAGE_FIELDS = (
    "usage_prompt_tokens",
    "usage_completion_tokens",
    "usage_source",
    "model",
    "finish_reason",
)


@dataclass(frozen=True)
class JobDetails:
    """A job's status and what its worker recorded when it ended; None where absent (the
    job has not ended, is unknown, or its worker recorded nothing).

    `usage_source` is ``reported`` when the token counts are the model server's, ``counted``
    when `completion_tokens` is the number of text chunks the worker saw (an LLM without usage
    reports, or a stream cut short by a cancellation or an error: tokens counted so far).
    `finish_reason` is the model's (``stop``, ``length``, ...), else ``cancelled`` or
    ``error`` for a job that ended so.

    `watchers` is how many subscribers follow the job now (each sync or own-reads subscriber,
    each fan-out subscriber, each open SSE stream of a bridge: see `_presence`).
    """

    status: JobStatus
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    watchers: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (`status` as its string)."""
        return {
            "status": self.status.value,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_source": self.usage_source,
            "model": self.model,
            "finish_reason": self.finish_reason,
        }


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def _count(value: Any) -> int | None:
    text = _text(value)
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        return None
    return number if number >= 0 else None


def details_from_fields(status: JobStatus, values: Sequence[Any]) -> JobDetails:
    """`JobDetails` from an HMGET of `USAGE_FIELDS` (bytes or str values, None for absent
    ones; malformed counts read as None)."""
    got = list(values) + [None] * (len(USAGE_FIELDS) - len(values))
    prompt, completion, source, model, finish = got[: len(USAGE_FIELDS)]
    return JobDetails(
        status,
        prompt_tokens=_count(prompt),
        completion_tokens=_count(completion),
        usage_source=_text(source),
        model=_text(model),
        finish_reason=_text(finish),
    )


def cancel_succeeded(verdict: str, *, retried: bool) -> bool:
    """Whether a CANCEL call ended (`withdrawn`) or flagged (`requested`) the job. After a
    retry, `cancelled` counts too: an earlier attempt whose reply was lost did it."""
    return verdict in ("withdrawn", "requested") or (retried and verdict == "cancelled")


def status_from_check(verdict: str) -> JobStatus:
    """Map a CHECK verdict to a `JobStatus`."""
    if verdict == "missing":
        return JobStatus.NOT_FOUND
    if verdict in ("lost", "withdrawn"):
        return JobStatus.FAILED
    return JobStatus(verdict)


@dataclass(frozen=True)
class SubmitPlan:
    """Everything one submit needs: `call`, the one SUBMIT when a server holds both the queue
    and the events; `job_call` then `enqueue`, SUBMIT's two halves when they are apart."""

    keys: JobKeys
    call: ScriptCall
    job_call: ScriptCall
    enqueue: ScriptCall

    @property
    def job_id(self) -> str:
        return self.keys.job_id


def plan_submit(
    query: Any,
    context: Any,
    *,
    job_id: str | None,
    prefix: str,
    max_query_chars: int,
    start_timeout_s: float,
    retention_s: float,
    trace: dict[str, str] | None = None,
) -> SubmitPlan:
    """Validate the request (raising `InvalidRequest`) and build the SUBMIT call. `trace` is
    the submitter's trace context (`tracing.carrier`), carried to the worker in the request."""
    request = parse_request(query, context, max_query_chars=max_query_chars, trace=trace)
    jid = validate_job_id(job_id) if job_id is not None else new_job_id()
    keys = JobKeys(prefix, jid)
    now_ms = int(time.time() * 1000)
    start_timeout_ms = int(start_timeout_s * 1000)
    record_ttl_ms = start_timeout_ms + int(retention_s * 1000)
    record = arq_job_record(jid, request, now_ms)
    args: dict[str, Any] = {
        "record": record,
        "now_ms": now_ms,
        "start_timeout_ms": start_timeout_ms,
        "record_ttl_ms": record_ttl_ms,
        "nonce": new_job_id(),
    }
    return SubmitPlan(
        keys,
        submit_call(keys, **args),
        submit_call(keys, with_queue=False, **args),
        enqueue_call(keys, **args),
    )


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
    """The state of following one job's stream: cursor, end, and what to do next.

    Every reader drives it: the sync and async twins' own reads, each fan-out subscriber, and
    the fan-out reader for each watched stream. The I/O around it is a loop of
    `take(read(cursor, block if may_block else None))` and, after an empty read,
    `on_idle(check())`.
    """

    keys: JobKeys
    cursor: str = "0-0"
    done: bool = False
    seen: int = 0
    final_seen: bool = False  # CHECK reported a final status: one last read decides
    count: int = READ_COUNT  # entries the next read asks for (see `take`)

    @property
    def job_id(self) -> str:
        return self.keys.job_id

    @property
    def may_block(self) -> bool:
        """Whether the next read may block: not once the job is known to have ended."""
        return not self.final_seen

    def take(self, response: Any) -> list[StreamEvent]:
        """Decode a raw XREAD response (or raw XRANGE entries) for this job; stops after
        the terminal event. A page as long as `count` asked for raises `count` to
        `REPLAY_COUNT`: more follows, so the next read asks for a bigger page."""
        if not response:
            return []
        entries = stream_entries(response)
        if len(entries) >= self.count:
            self.count = REPLAY_COUNT
        events: list[StreamEvent] = decode_entries(self.job_id, entries)
        if events:
            self.cursor = events[-1].id or self.cursor
            self.seen += len(events)
            self.done = events[-1].is_terminal
        return events

    def advance(self, event: StreamEvent) -> None:
        """Move past one event handed over by someone else's read (the fan-out)."""
        self.cursor = event.id or self.cursor
        self.seen += 1
        self.done = event.is_terminal

    def on_idle(self, verdict: str) -> bool:
        """Digest a CHECK verdict after a read that returned nothing. Raises `JobNotFound`
        for `missing`. Returns True when the job's terminal entry is known to exist now (a
        final status, or CHECK has just appended the ERROR of a lost or withdrawn job): the
        next read need not wait. A second empty read after a final status ends the follow:
        the job ended at or before the cursor."""
        if verdict == "missing":
            raise JobNotFound(self.job_id, self.keys.prefix)
        if self.final_seen:
            self.done = True
            return False
        if verdict in FINAL_STATUSES:
            self.final_seen = True
            return True
        return verdict in ENDED_NOW

    def settle(self) -> None:
        """A catch-up read came back short after a final status was seen: nothing follows
        the cursor, so the follow is over."""
        if self.final_seen:
            self.done = True


class SyncReads(Protocol):
    """What `follow` needs of a transport (the sync twin, or a fake one in tests)."""

    def read(
        self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = READ_COUNT
    ) -> Any:
        """A raw XREAD reply for `keys.events` after `cursor`, blocking up to `block_ms`, of
        at most `count` entries."""

    def check(self, keys: JobKeys) -> str:
        """The CHECK script's verdict for the job."""


class AsyncReads(Protocol):
    """What `afollow` needs of a transport (the async twin, or a fake one in tests)."""

    async def read(
        self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = READ_COUNT
    ) -> Any:
        """A raw XREAD reply for `keys.events` after `cursor`, blocking up to `block_ms`, of
        at most `count` entries."""

    async def check(self, keys: JobKeys) -> str:
        """The CHECK script's verdict for the job."""


def follow_pages(
    t: SyncReads, f: Follower, *, block_ms: int, stats: StreamStats
) -> Generator[list[StreamEvent], None, None]:
    """Drive `f` over the sync transport `t`: every event after its cursor, exactly once,
    until the terminal one, a page (one read's events, never empty) at a time; counted into
    `stats`. Raises `JobNotFound`."""
    stats.started()
    while not f.done:
        events = f.take(t.read(f.keys, f.cursor, block_ms if f.may_block else None, f.count))
        if events:
            stats.saw_page(events)
            yield events
        else:
            f.on_idle(t.check(f.keys))


def follow(
    t: SyncReads, f: Follower, *, block_ms: int, stats: StreamStats
) -> Generator[StreamEvent, None, None]:
    """`follow_pages`, one event at a time (a C-level chain over the pages: no generator
    frame per event besides this one)."""
    yield from flatten(follow_pages(t, f, block_ms=block_ms, stats=stats))


def flatten(pages: Generator[list[StreamEvent], None, None]) -> Generator[StreamEvent, None, None]:
    """The events of `pages`, in order; closing this generator closes `pages`."""
    try:
        yield from chain.from_iterable(pages)
    finally:
        pages.close()


async def afollow(
    t: AsyncReads, f: Follower, *, block_ms: int, stats: StreamStats
) -> AsyncGenerator[StreamEvent, None]:
    """`follow` over an async transport (a subscriber with its own reads)."""
    stats.started()
    while not f.done:
        block = block_ms if f.may_block else None
        events = f.take(await t.read(f.keys, f.cursor, block, f.count))
        if events:
            stats.saw_page(events)
            for event in events:
                yield event
        else:
            f.on_idle(await t.check(f.keys))


def check_speed(speed: object) -> float:
    """A replay's `speed`: a finite number >= 0, else `InvalidRequest`."""
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not speed >= 0:
        raise InvalidRequest(f"speed must be a number >= 0 (0: no waiting), got {speed!r}")
    if speed == float("inf"):
        raise InvalidRequest("speed must be finite; use 0 for no waiting")
    return float(speed)


def replay_delay(event: StreamEvent, started: float, now: float, speed: float) -> float:
    """Seconds to wait before re-emitting `event` so it keeps its original pacing / `speed`.

    `started` is when the replay began (monotonic); `speed` 0 means no waiting at all.
    """
    if speed <= 0:
        return 0.0
    return max(0.0, started + event.latency / speed - now)
