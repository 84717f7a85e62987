"""Pipelines the queue tests serve, importable by a worker in another process
(`--app tests.queue_apps:<factory>`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from streaming_rag import StreamConfig, StreamingRAG

ANSWER_WORDS = [f"w{i}" for i in range(12)]


class Backend:
    """Instant retrieval of two docs."""

    async def retrieve(self, query: str) -> list[str]:
        return [f"doc about {query}", "second doc"]


class WordsLLM:
    """Yields `words` (each + a space), yielding to the loop between tokens."""

    def __init__(self, words: list[str] | None = None) -> None:
        self.words = ANSWER_WORDS if words is None else words

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for word in self.words:
            await asyncio.sleep(0)
            yield word + " "


class GatedLLM:
    """Yields `first` tokens, then waits for `release` (an asyncio.Event made per stream) and
    records when its stream is closed, so tests can stall a job mid-answer."""

    def __init__(self, first: int = 2) -> None:
        self.first = first
        self.started = threading.Event()
        self.closed = threading.Event()
        self.release: asyncio.Event | None = None

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        self.release = asyncio.Event()
        try:
            for i in range(self.first):
                yield f"t{i} "
            self.started.set()
            await self.release.wait()
            yield "end"
        finally:
            self.closed.set()


def words_app() -> StreamingRAG:
    return StreamingRAG(Backend(), WordsLLM())


def stalled_app() -> StreamingRAG:
    """Emits two chunks, then stalls (until the process dies)."""
    return StreamingRAG(Backend(), GatedLLM(), StreamConfig(generation_timeout=600))


def make_rag(llm: Any = None, **config: Any) -> StreamingRAG:
    return StreamingRAG(Backend(), llm if llm is not None else WordsLLM(), StreamConfig(**config))
