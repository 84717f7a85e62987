"""The three generation strategies, each an async iterator of text tokens with `aclose()`.

1. `async`: `llm.astream(prompt)`, consumed directly.
2. `sync`: `llm.stream(prompt)`, iterated in one daemon thread per stream (`ThreadedIterator`).
3. `sim`: `rag_system.generate(query, context)` (sync functions run in a thread), its answer cut
   into `chunk_size`-word chunks whose concatenation is exactly the answer, `sim_delay` seconds
   apart (no delay before the first chunk or after the last).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from ._config import StreamConfig
from ._protocols import AsyncStreamableLLM, SyncStreamableLLM
from ._threads import ThreadedIterator, run_in_thread

__all__ = [
    "ANSWER_KEYS",
    "Strategy",
    "answer_text",
    "open_stream",
    "select_strategy",
    "split_words",
]

Strategy = Literal["async", "sync", "sim"]

#: Keys read, in order, when `rag_system.generate()` returns a mapping.
ANSWER_KEYS = ("answer", "response", "text", "content")

_WORD = re.compile(r"\S+\s*")


def select_strategy(llm: Any) -> Strategy:
    """Strategy 1 if `llm` is an `AsyncStreamableLLM`, 2 if a `SyncStreamableLLM`, else 3."""
    if llm is not None and isinstance(llm, AsyncStreamableLLM):
        return "async"
    if llm is not None and isinstance(llm, SyncStreamableLLM):
        return "sync"
    return "sim"


def split_words(answer: str, chunk_size: int) -> list[str]:
    """Cut `answer` into chunks of `chunk_size` words; `"".join(result) == answer`.

    Each word keeps the whitespace that follows it; leading whitespace joins the first chunk.
    An empty answer gives no chunks; a whitespace-only answer gives one chunk.
    """
    stripped = answer.lstrip()
    lead = answer[: len(answer) - len(stripped)]
    words = _WORD.findall(stripped)
    chunks = ["".join(words[i : i + chunk_size]) for i in range(0, len(words), chunk_size)]
    if lead:
        if chunks:
            chunks[0] = lead + chunks[0]
        else:
            chunks = [lead]
    return chunks


def answer_text(result: Any) -> str:
    """The answer in what `generate()` returned.

    A `str` as is; `None` as `""`; a mapping's first of `ANSWER_KEYS` holding a str; an object's
    `content` or `text` attribute holding a str (chat-message objects). Anything else raises
    `TypeError`, which ends the stream with a generation ERROR.
    """
    if isinstance(result, str):
        return result
    if result is None:
        return ""
    if isinstance(result, Mapping):
        for key in ANSWER_KEYS:
            value = result.get(key)
            if isinstance(value, str):
                return value
        raise TypeError(
            "rag_system.generate() returned a dict without a string under any of "
            f"{', '.join(repr(k) for k in ANSWER_KEYS)} (keys: {sorted(map(str, result))})"
        )
    for attr in ("content", "text"):
        value = getattr(result, attr, None)
        if isinstance(value, str):
            return value
    raise TypeError(
        f"rag_system.generate() returned {type(result).__name__}; expected a str or a dict "
        "with an 'answer' key"
    )


async def _simulate(
    rag_system: Any, query: str, context: dict[str, Any], config: StreamConfig
) -> AsyncIterator[str]:
    generate = rag_system.generate
    if inspect.iscoroutinefunction(generate):
        result = await generate(query, context)
    else:
        result = await run_in_thread(generate, query, context, name="streaming-rag-generate")
        if inspect.isawaitable(result):
            result = await result
    chunks = split_words(answer_text(result), config.chunk_size)
    delay = config.sim_delay
    for index, chunk in enumerate(chunks):
        if index and delay > 0:
            await asyncio.sleep(delay)
        yield chunk


async def open_stream(
    strategy: Strategy,
    *,
    llm: Any,
    rag_system: Any,
    prompt: str,
    query: str,
    context: dict[str, Any],
    config: StreamConfig,
) -> Any:
    """Start generating; return an async iterator of tokens (closed with `aclose()` if it has
    one). Awaited inside the generation deadline: an `async def astream()` that returns an
    async iterator is awaited here."""
    if strategy == "async":
        result = llm.astream(prompt)
        if not hasattr(result, "__anext__"):
            if inspect.isawaitable(result):
                result = await result
            result = result.__aiter__()
        return result
    if strategy == "sync":
        return ThreadedIterator(lambda: llm.stream(prompt), name="streaming-rag-sync-llm")
    return _simulate(rag_system, query, context, config)
