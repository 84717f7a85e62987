"""Exceptions of the queue layer, shared by `worker` and `client`.

Tree::

    streaming_rag.exceptions.StreamingRAGError
    └── QueueError                         anything the queue layer raises on purpose
        ├── InvalidRequest(ValueError)     a query/context refused at submit; nothing queued
        ├── JobNotFound(LookupError)       unknown or expired job id
        ├── DuplicateJob(QueueError)       a caller-supplied job id that is already in use
        ├── EventDecodeError               a stream entry that is not a valid event
        └── ServerUnavailable(ConnectionError)
                                           the Redis server cannot be reached (names the URL)

Foreign exceptions (redis, msgpack, pydantic) are translated into these at the boundary.
"""

from __future__ import annotations

from streaming_rag.exceptions import StreamingRAGError

__all__ = [
    "DuplicateJob",
    "EventDecodeError",
    "InvalidRequest",
    "JobNotFound",
    "QueueError",
    "ServerUnavailable",
]


class QueueError(StreamingRAGError):
    """Root of the queue layer's exceptions."""


class InvalidRequest(QueueError, ValueError):
    """A job request refused before anything was queued; the message says what to fix."""


class JobNotFound(QueueError, LookupError):
    """No job with this id exists under this prefix (never submitted, or expired)."""

    def __init__(self, job_id: str, prefix: str) -> None:
        super().__init__(
            f"job {job_id!r} not found under prefix {prefix!r}: it was never submitted there, "
            "or its retention period has passed"
        )
        self.job_id = job_id
        self.prefix = prefix


class DuplicateJob(QueueError):
    """A caller-supplied job id that a live (or retained) job already uses."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job id {job_id!r} is already in use; pick another id or let submit() generate one"
        )
        self.job_id = job_id


class EventDecodeError(QueueError):
    """A stream entry that is not a valid encoded event; names the job and the entry."""

    def __init__(self, job_id: str, entry_id: str, reason: str) -> None:
        super().__init__(f"cannot decode event {entry_id} of job {job_id!r}: {reason}")
        self.job_id = job_id
        self.entry_id = entry_id


class ServerUnavailable(QueueError, ConnectionError):
    """The Redis server named by the URL did not answer."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach Redis at {url}: {reason.rstrip('.')}. Start a server there, or point "
            "REDIS_URL / --redis-url at one"
        )
        self.url = url
