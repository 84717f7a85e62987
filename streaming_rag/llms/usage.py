"""`Usage`: what one LLM call cost, as the model server reported it or as counted on the way.

An adapter that knows about usage (`OpenAICompatibleLLM`) fills the `Usage` of the running
context (`current_usage()`) while it streams: the model's name, the finish reason, and the
token counts from the server's usage report (``stream_options.include_usage``). Until such a
report arrives (a stream that was cancelled or failed never gets one) `completion_tokens`
holds the number of text chunks yielded so far and `reported` stays False.

The caller opens a scope with `collect_usage()` (or runs a task in `usage_context()`'s
context) and reads the holder when the call has ended. Callers that never open a scope cost
the adapter nothing but a context-variable read; adapters that know nothing of usage leave
the holder alone, and the caller counts what it saw (`chunks`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Usage", "collect_usage", "current_usage", "usage_context"]


@dataclass
class Usage:
    """Token usage and outcome of one LLM call; None where not known.

    `reported` is True when `prompt_tokens` / `completion_tokens` come from the model
    server's usage report, False when `completion_tokens` was counted (text chunks yielded).
    `chunks` is for callers that count the chunks they received themselves (the worker does,
    for adapters that fill nothing).
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    model: str | None = None
    finish_reason: str | None = None
    reported: bool = False
    chunks: int = 0

    @property
    def filled(self) -> bool:
        """Whether an adapter wrote anything into this holder."""
        return self.model is not None or self.completion_tokens is not None


_CURRENT: contextvars.ContextVar[Usage | None] = contextvars.ContextVar(
    "streaming_rag_usage", default=None
)


def current_usage() -> Usage | None:
    """The holder of the running context, or None when nobody collects usage."""
    return _CURRENT.get()


@contextmanager
def collect_usage() -> Iterator[Usage]:
    """Collect the usage of the LLM calls made inside the ``with`` block (and in the tasks and
    threads started from it, which inherit the context) into one fresh `Usage`."""
    usage = Usage()
    token = _CURRENT.set(usage)
    try:
        yield usage
    finally:
        _CURRENT.reset(token)


def usage_context() -> tuple[contextvars.Context, Usage]:
    """A copy of the current context holding a fresh `Usage`: run a task in it
    (``asyncio.create_task(coro, context=ctx)``) to collect that task's usage."""
    ctx = contextvars.copy_context()
    usage = Usage()
    ctx.run(_CURRENT.set, usage)
    return ctx, usage
