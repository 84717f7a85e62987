"""Every exception streaming-rag raises on purpose: one tree, for the library, the wire
contract, the worker, the client and the CLI.

Tree::

    StreamingRAGError                 root of everything this project raises on purpose
    ├── ConfigError(ValueError)       a StreamConfig or prompt template that cannot work
    ├── BackendError(TypeError)       a rag_system / llm that does not fit the protocols
    │   └── NoGeneratorError(AttributeError)
    │                                 no streaming LLM and no rag_system.generate()
    ├── LLMError                      an LLM adapter (`streaming_rag.llms`) failed: an HTTP
    │                                 error status, a refused or dropped connection, a
    │                                 failing LangChain runnable; the message names the
    │                                 server (or runnable) and the status or reason
    ├── QueueError                    anything the queue layer (wire, worker, client) raises
    │   ├── InvalidRequest(ValueError)
    │   │                             a query/context/job id/prefix/setting refused before
    │   │                             anything was queued; the message says what to fix
    │   ├── JobNotFound(LookupError)  unknown or expired job id
    │   ├── DuplicateJob              a caller-supplied job id that is already in use
    │   ├── EventDecodeError          a stream entry that is not a valid event
    │   ├── ServerUnavailable(ConnectionError)
    │   │                             the Redis server cannot be reached (names the URL,
    │   │                             password masked)
    │   └── WorkerConfigError(ValueError)
    │                                 a worker setting or app (`--app module:factory`) that
    │                                 cannot work; the message names it
    ├── CLIError                      a problem the `streaming-rag` command reports in one line
    └── AccessDenied                  the HTTP bridge refused a request (`authorize=`, links)
        ├── Unauthorized              no valid credentials were presented: HTTP 401
        └── Forbidden(PermissionError)
                                      credentials that do not grant this: HTTP 403

Failures *inside* a stream (retrieval or generation raising or timing out) are not raised:
they become an `ERROR` event, as the spec requires. Exceptions raised by the caller's own
`on_chunk` / `on_event` callbacks propagate unchanged. Foreign exceptions (redis, msgpack,
pydantic, arq) are translated into these at the boundary that calls the foreign code.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "BackendError",
    "CLIError",
    "ConfigError",
    "DuplicateJob",
    "EventDecodeError",
    "Forbidden",
    "InvalidRequest",
    "JobNotFound",
    "LLMError",
    "NoGeneratorError",
    "QueueError",
    "ServerUnavailable",
    "StreamingRAGError",
    "Unauthorized",
    "WorkerConfigError",
]


class StreamingRAGError(Exception):
    """Root of the exceptions this project raises."""


class ConfigError(StreamingRAGError, ValueError):
    """A configuration value that cannot work; the message names the field and the fix."""


class BackendError(StreamingRAGError, TypeError):
    """The RAG backend or LLM does not expose what the pipeline needs."""


class NoGeneratorError(BackendError, AttributeError):
    """Strategy 3 was selected but `rag_system.generate` does not exist."""


class LLMError(StreamingRAGError):
    """An LLM adapter of `streaming_rag.llms` failed while opening or reading a stream.

    The message names the server (`base_url`) or runnable and the HTTP status or the reason,
    so a stream that ends with it shows a readable ERROR event. The foreign exception is
    chained as `__cause__`; `status_code` is the HTTP status when there was one, else None.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class QueueError(StreamingRAGError):
    """Root of the queue layer's exceptions (wire contract, worker, client)."""


class InvalidRequest(QueueError, ValueError):
    """A job request or client setting refused before anything was queued; the message says
    what to fix."""


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
    """The Redis server named by the URL did not answer. `url` must already be redacted
    (the caller masks any password)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach Redis at {url}: {reason.rstrip('.')}. Start a server there, or point "
            "REDIS_URL / --redis-url at one"
        )
        self.url = url


class WorkerConfigError(QueueError, ValueError):
    """A worker setting that cannot work, or an app that cannot be loaded; names it."""


class CLIError(StreamingRAGError):
    """A problem the `streaming-rag` command reports in one line (exit code 2)."""


class AccessDenied(StreamingRAGError):
    """The HTTP bridge (`streaming_rag_client.web`) refused a request. Raise a subclass from
    your `authorize` callback; the message becomes the response's `{"detail": ...}`, so it
    must not quote a credential."""


class Unauthorized(AccessDenied):
    """No valid credentials were presented (none, or unreadable): HTTP 401."""


class Forbidden(AccessDenied, PermissionError):
    """Credentials were presented but do not grant this action on this job: HTTP 403."""
