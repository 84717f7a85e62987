"""Pipelines the benchmarks serve (instant retrieval and LLMs; timestamps where measured)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from streaming_rag import StreamConfig, StreamingRAG


class StampBackend:
    """`retrieve` returns one doc holding `time.time()` at the moment the job's code starts."""

    async def retrieve(self, query: str) -> list[dict[str, float | str]]:
        return [{"content": "stamp", "t": time.time()}]


class InstantLLM:
    """Yields `tokens` tokens without waiting (parsed from the prompt's query: `tokens=N`)."""

    def __init__(self, tokens: int = 1) -> None:
        self.tokens = tokens

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        n = self.tokens
        marker = prompt.rfind("tokens=")
        if marker >= 0:
            n = int(prompt[marker + 7 :].split()[0].strip(".:"))
        for _ in range(n):
            yield "token "


def stamp_app() -> StreamingRAG:
    return StreamingRAG(StampBackend(), InstantLLM(1), StreamConfig())
