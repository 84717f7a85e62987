"""Server-sent events for sync web frameworks (Django, Flask, any WSGI app): the framing and
resume semantics of the HTTP bridge (`streaming_rag_client.web`), over the sync client.

A framework's events view needs three lines (see examples/django_sse and examples/flask_sse)::

    body = open_event_stream(rag, job_id, last_event_id=..., after=...)
    if body is None:
        return <204>  # resuming at or after the terminal event: an EventSource stops here
    return <streaming response of body, text/event-stream, headers SSE_HEADERS>

`open_event_stream` raises `InvalidRequest` (answer 422) for a cursor that is not an entry id
and `JobNotFound` (404) for an unknown job. The body starts with `retry: <ms>`, then one
`format_event` message per event after the cursor (`resume_cursor`: `Last-Event-ID` wins over
`?after=`), each exactly once, and ends after the terminal event. Unlike the Starlette bridge it
sends no keep-alive comments (a sync body blocks while it waits for the next event).
"""

from __future__ import annotations

from collections.abc import Generator

from streaming_rag import StreamEvent
from streaming_rag.exceptions import JobNotFound, ServerUnavailable

from ._client import StreamingRAGClient
from ._core import JobStatus
from ._sse import RETRY_MS, SSE_HEADERS, UNAVAILABLE, entry_key, format_event, resume_cursor

__all__ = [
    "RETRY_MS",
    "SSE_HEADERS",
    "format_event",
    "open_event_stream",
    "resume_cursor",
]

_ENDED = (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


def open_event_stream(
    rag: StreamingRAGClient,
    job_id: str,
    *,
    last_event_id: str | None = None,
    after: str | None = None,
    retry_ms: int = RETRY_MS,
) -> Generator[bytes, None, None] | None:
    """The SSE body for job `job_id` resumed after `last_event_id` (the request's
    `Last-Event-ID` header) or else `after` (its `?after=` parameter), or None when the job has
    ended and nothing is left after that cursor (answer 204). Raises `InvalidRequest` for a
    cursor that is not an entry id, `JobNotFound` for an unknown job. Closing the body (WSGI
    servers do when the client goes away) stops following the job."""
    cursor = resume_cursor(last_event_id, after)
    status = rag.status(job_id)
    if status is JobStatus.NOT_FOUND:
        raise JobNotFound(job_id, rag.prefix)
    if cursor is not None and status in _ENDED and _nothing_after(rag, job_id, cursor):
        return None
    return _body(rag.events(job_id, after=cursor), retry_ms)


def _nothing_after(rag: StreamingRAGClient, job_id: str, cursor: str) -> bool:
    """Whether the ended job `job_id` has no event after entry `cursor`."""
    last = None
    for event in rag.events(job_id):
        last = event.id
    return last is None or entry_key(cursor) >= entry_key(last)


def _body(
    events: Generator[StreamEvent, None, None], retry_ms: int
) -> Generator[bytes, None, None]:
    try:
        yield f"retry: {retry_ms}\n\n".encode()
        try:
            for event in events:
                yield format_event(event)
        except JobNotFound:  # expired mid-stream: just end
            return
        except ServerUnavailable:
            yield UNAVAILABLE
    finally:
        events.close()
