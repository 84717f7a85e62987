"""Tiny in-test RAG backends and LLMs shared by the `streaming_rag` library tests.

Every fake records what it saw (prompts, queries, thread idents) and signals with
`threading.Event`s, which work whichever thread or event loop the stream runs on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from streaming_rag import EventType, StreamEvent

WAIT_S = 5.0  # liveness guard for Event.wait(): never reached when the code is right

DOCS = ["Paris is the capital of France.", "The Seine flows through Paris."]
ANSWER = "Paris is the capital of France and the Seine flows through it."


# -- RAG backends ---------------------------------------------------------------------------
class SyncBackend:
    """`retrieve` and `generate` as plain functions; records calls and their threads."""

    def __init__(self, docs: Any = DOCS, answer: Any = ANSWER, llm: Any = None) -> None:
        self.docs = docs
        self.answer = answer
        if llm is not None:
            self.llm = llm
        self.retrieve_calls: list[str] = []
        self.retrieve_threads: list[int] = []
        self.generate_calls: list[tuple[str, Any]] = []
        self.generate_threads: list[int] = []

    def retrieve(self, query: str) -> Any:
        self.retrieve_calls.append(query)
        self.retrieve_threads.append(threading.get_ident())
        return self.docs

    def generate(self, query: str, context: Any) -> Any:
        self.generate_calls.append((query, context))
        self.generate_threads.append(threading.get_ident())
        return self.answer


class AsyncBackend:
    """`retrieve` and `generate` as coroutine functions."""

    def __init__(self, docs: Any = DOCS, answer: Any = ANSWER) -> None:
        self.docs = docs
        self.answer = answer
        self.retrieve_calls: list[str] = []
        self.retrieve_threads: list[int] = []
        self.generate_calls: list[tuple[str, Any]] = []

    async def retrieve(self, query: str) -> Any:
        self.retrieve_calls.append(query)
        self.retrieve_threads.append(threading.get_ident())
        await asyncio.sleep(0)
        return self.docs

    async def generate(self, query: str, context: Any) -> Any:
        self.generate_calls.append((query, context))
        await asyncio.sleep(0)
        return self.answer


class RetrieveOnly:
    """A backend with `.retrieve` and nothing else (no `.generate`, no `.llm`)."""

    def __init__(self, docs: Any = DOCS) -> None:
        self.docs = docs

    async def retrieve(self, query: str) -> Any:
        return self.docs


# -- LLMs -----------------------------------------------------------------------------------
class AsyncLLM:
    """Strategy 1 LLM: an async generator over `tokens`.

    `stall_after=n` makes it wait forever (on a future nobody resolves) after `n` tokens;
    `fail_after=(n, exc)` raises `exc` after `n` tokens. `closed` is set by the generator's
    `finally`, `started` when the first token is about to be produced.
    """

    def __init__(
        self,
        tokens: Iterable[Any] = ("Hello ", "async ", "world."),
        *,
        stall_after: int | None = None,
        fail_after: tuple[int, BaseException] | None = None,
    ) -> None:
        self.tokens = list(tokens)
        self.stall_after = stall_after
        self.fail_after = fail_after
        self.prompts: list[str] = []
        self.threads: list[int] = []
        self.started = threading.Event()
        self.stalled = threading.Event()
        self.closed = threading.Event()

    async def astream(self, prompt: str) -> AsyncIterator[Any]:
        self.prompts.append(prompt)
        self.started.set()
        try:
            for i, token in enumerate(self.tokens):
                if self.stall_after == i:
                    self.stalled.set()
                    await asyncio.get_running_loop().create_future()
                if self.fail_after is not None and self.fail_after[0] == i:
                    raise self.fail_after[1]
                self.threads.append(threading.get_ident())
                yield token
            if self.stall_after == len(self.tokens):
                self.stalled.set()
                await asyncio.get_running_loop().create_future()
            if self.fail_after is not None and self.fail_after[0] == len(self.tokens):
                raise self.fail_after[1]
        finally:
            self.closed.set()


class SyncLLM:
    """Strategy 2 LLM: a generator over `tokens`, recording the thread of every step.

    `block_after=n` makes it wait on `release` (a `threading.Event`) before token `n`;
    `entered_block` is set just before it starts waiting.
    """

    def __init__(
        self,
        tokens: Iterable[Any] = ("Hello ", "sync ", "world."),
        *,
        block_after: int | None = None,
        fail_after: tuple[int, BaseException] | None = None,
    ) -> None:
        self.tokens = list(tokens)
        self.block_after = block_after
        self.fail_after = fail_after
        self.prompts: list[str] = []
        self.threads: list[int] = []
        self.thread_objects: list[threading.Thread] = []
        self.release = threading.Event()
        self.entered_block = threading.Event()
        self.closed = threading.Event()

    def stream(self, prompt: str) -> Iterator[Any]:
        self.prompts.append(prompt)
        try:
            for i, token in enumerate(self.tokens):
                self.threads.append(threading.get_ident())
                self.thread_objects.append(threading.current_thread())
                if self.block_after == i:
                    self.entered_block.set()
                    self.release.wait(WAIT_S)
                if self.fail_after is not None and self.fail_after[0] == i:
                    raise self.fail_after[1]
                yield token
        finally:
            self.closed.set()


class ClosableAsyncIterator:
    """A class-based async iterator: only an explicit `aclose()` marks it closed.

    With `stall=True` it waits forever after the tokens instead of ending.
    """

    def __init__(self, tokens: Iterable[str], *, stall: bool = False, error: Any = None) -> None:
        self._tokens = list(tokens)
        self._stall = stall
        self._error = error
        self.aclose_calls = 0
        self.closed = threading.Event()

    def __aiter__(self) -> ClosableAsyncIterator:
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(0)
        if self._tokens:
            return self._tokens.pop(0)
        if self._error is not None:
            raise self._error
        if self._stall:
            await asyncio.get_running_loop().create_future()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.aclose_calls += 1
        self.closed.set()


class ClassAsyncLLM:
    """Strategy 1 LLM returning a `ClosableAsyncIterator`."""

    def __init__(self, it: ClosableAsyncIterator) -> None:
        self.it = it

    def astream(self, prompt: str) -> ClosableAsyncIterator:
        return self.it


class ClosableIterator:
    """A class-based sync iterator: only an explicit `close()` marks it closed."""

    def __init__(self, tokens: Iterable[str], *, error: BaseException | None = None) -> None:
        self._tokens = list(tokens)
        self._error = error
        self.close_calls = 0
        self.closed = threading.Event()

    def __iter__(self) -> ClosableIterator:
        return self

    def __next__(self) -> str:
        if self._tokens:
            return self._tokens.pop(0)
        if self._error is not None:
            raise self._error
        raise StopIteration

    def close(self) -> None:
        self.close_calls += 1
        self.closed.set()


class ClassSyncLLM:
    """Strategy 2 LLM returning a `ClosableIterator`."""

    def __init__(self, it: ClosableIterator) -> None:
        self.it = it

    def stream(self, prompt: str) -> ClosableIterator:
        return self.it


class FakeClock:
    """A controllable stand-in for `time.perf_counter` (patch `_pipeline.time` with it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- helpers --------------------------------------------------------------------------------
async def acollect(agen: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in agen]


def types(events: Iterable[StreamEvent]) -> list[EventType]:
    return [e.type for e in events]


def chunks(events: Iterable[StreamEvent]) -> list[str]:
    return [e.data for e in events if e.type is EventType.CHUNK]


HAPPY = [EventType.RETRIEVAL_START, EventType.RETRIEVAL_DONE, EventType.GENERATION_START]
