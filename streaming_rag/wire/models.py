"""The job payload, validated at submit (client) and again at start (worker)."""

from __future__ import annotations

from typing import Any

import msgpack
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..exceptions import InvalidRequest

__all__ = [
    "DEFAULT_MAX_QUERY_CHARS",
    "JOB_FUNCTION",
    "JobRequest",
    "arq_job_record",
    "parse_request",
    "request_from_payload",
]

DEFAULT_MAX_QUERY_CHARS = 32_000

#: The arq function name a worker registers and a client enqueues.
JOB_FUNCTION = "streaming_rag_answer"


class JobRequest(BaseModel):
    """What a client asks a worker to answer. `v` is the payload version. `trace` is the
    submitter's trace context as a W3C carrier (``traceparent``, ``tracestate``), present only
    when the submitter was tracing (OpenTelemetry, extra `otel`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: int = 1
    query: str
    context: dict[str, Any] | None = None
    trace: dict[str, str] | None = None

    @field_validator("query")
    @classmethod
    def _query_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query must be a non-empty string")
        return value

    @field_validator("context")
    @classmethod
    def _context_packable(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                msgpack.packb(value, use_bin_type=True)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(
                    f"context must hold only msgpack-able values (str, bytes, int, float, "
                    f"bool, None, list, dict): {exc}"
                ) from None
        return value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "request"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}"


def parse_request(
    query: Any,
    context: Any = None,
    *,
    max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
    trace: dict[str, str] | None = None,
) -> JobRequest:
    """Validate a query and context (and a trace carrier) into a `JobRequest`, or raise
    `InvalidRequest`."""
    if not isinstance(query, str):
        raise InvalidRequest(f"query must be a str, got {type(query).__name__}")
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"query is not valid text: it holds a lone surrogate at character {exc.start} "
            "(a broken UTF-16 pair): send it as proper Unicode"
        ) from None
    if len(query) > max_query_chars:
        raise InvalidRequest(
            f"query is {len(query)} characters; the limit is {max_query_chars} "
            "(max_query_chars): shorten it or raise the limit"
        )
    if context is not None and not isinstance(context, dict):
        raise InvalidRequest(f"context must be a dict or None, got {type(context).__name__}")
    try:
        return JobRequest(query=query, context=context, trace=trace or None)
    except ValidationError as exc:
        raise InvalidRequest(_first_error(exc)) from None


def request_from_payload(payload: Any) -> JobRequest:
    """Rebuild a `JobRequest` from a job's msgpack-decoded payload (worker side)."""
    if not isinstance(payload, dict):
        raise InvalidRequest(f"job payload must be a map, got {type(payload).__name__}")
    try:
        return JobRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(_first_error(exc)) from None


_UNSET_TRACE = {"trace"}


def arq_job_record(job_id: str, request: JobRequest, enqueue_ms: int) -> bytes:
    """arq's job record for `request`, msgpack-encoded as the worker's deserializer expects.

    arq stores ``{"t": try, "f": function, "a": args, "k": kwargs, "et": enqueue_ms}``; the
    job's keyword arguments are ``job_id`` and ``request`` (the payload as a map; ``trace``
    only when set, so an untraced record is the same as before the field existed).
    """
    from .codec import pack_job

    return pack_job(
        {
            "t": None,
            "f": JOB_FUNCTION,
            "a": [],
            "k": {
                "job_id": job_id,
                "request": request.model_dump(
                    exclude=_UNSET_TRACE if request.trace is None else None
                ),
            },
            "et": enqueue_ms,
        }
    )
