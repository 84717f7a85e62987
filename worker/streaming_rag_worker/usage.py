"""Token usage of a job, recorded in its job hash once the job has ended.

The job's pump runs in a context of its own holding a fresh `Usage` (`scope()`); an adapter
that knows about usage (`OpenAICompatibleLLM`) fills it while it streams, and the pump counts
the CHUNK events it publishes. Once the pump has ended (the LLM stream is closed, so the counts
are final) and just before the terminal event is published, `record()` adds to the job hash
(``JobKeys.meta``, one HSET of that one key), so that whoever has seen the terminal event finds
the usage there:

- ``usage_prompt_tokens``: the server's count (absent when the server reported none: a
  cancelled or failed stream, or an LLM without usage reports);
- ``usage_completion_tokens``: the server's count, else the text chunks generated so far;
- ``usage_source``: ``reported`` (the server's report) or ``counted`` (chunks counted);
- ``model``: the model that answered (as the server named it), when known;
- ``finish_reason``: the model's (``stop``, ``length``, ...), else ``cancelled`` for a
  cancelled job and ``error`` for a failed one; absent otherwise.

Recording is best effort: a failure is logged and never changes the job's outcome. Event
payloads are untouched.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from streaming_rag.llms.usage import Usage, usage_context
from streaming_rag.wire import JobKeys

__all__ = ["FIELDS", "Usage", "fields", "record", "scope"]

logger = logging.getLogger("streaming_rag.worker")

#: Every field `record` may write into the job hash.
FIELDS = (
    "usage_prompt_tokens",
    "usage_completion_tokens",
    "usage_source",
    "model",
    "finish_reason",
)

_ENDINGS = {"cancelled": "cancelled", "failed": "error"}


def scope() -> tuple[contextvars.Context, Usage]:
    """A context to run the job's pump in, and the `Usage` it collects into."""
    return usage_context()


def fields(usage: Usage, status: str, llm: Any = None) -> dict[str, str | int]:
    """The job-hash fields for a job that ended with `status`. `llm` (the pipeline's LLM)
    names the model when no adapter did."""
    out: dict[str, str | int] = {}
    if usage.reported and usage.prompt_tokens is not None:
        out["usage_prompt_tokens"] = usage.prompt_tokens
    completion = usage.completion_tokens if usage.filled else None
    out["usage_completion_tokens"] = completion if completion is not None else usage.chunks
    out["usage_source"] = "reported" if usage.reported else "counted"
    model = usage.model or getattr(llm, "model", None)
    if isinstance(model, str) and model:
        out["model"] = model
    finish = usage.finish_reason or _ENDINGS.get(status)
    if finish:
        out["finish_reason"] = finish
    return out


async def record(redis: Any, keys: JobKeys, usage: Usage, status: str, llm: Any = None) -> None:
    """Write the usage fields into the job's hash, which the job's end (`status`) is about to
    settle (best effort: failures are logged). The running job's hash has no TTL yet: the
    terminal event's script gives it the retention TTL."""
    try:
        await redis.hset(keys.meta, mapping=fields(usage, status, llm))
    except Exception as exc:
        logger.warning("job %s: could not record its usage: %s", keys.job_id, exc)
