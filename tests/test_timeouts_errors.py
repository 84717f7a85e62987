"""§9 Error handling: timeouts, exceptions, exact ERROR payloads, nothing after ERROR."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from helpers_core import (
    HAPPY,
    WAIT_S,
    AsyncLLM,
    ClassAsyncLLM,
    ClosableAsyncIterator,
    RetrieveOnly,
    SyncBackend,
    SyncLLM,
    acollect,
    chunks,
    types,
)

from streaming_rag import EventType, StreamConfig, StreamingRAG

TINY = 0.05
RETRIEVAL_TIMEOUT = {"msg": "Retrieval timed out", "stage": "retrieval"}
GENERATION_TIMEOUT = {"msg": "Generation timed out", "stage": "generation"}


def cfg(**kw: Any) -> StreamConfig:
    kw.setdefault("sim_delay", 0)
    return StreamConfig(**kw)


# -- retrieval ------------------------------------------------------------------------------
async def test_async_retrieval_timeout_exact_payload() -> None:
    cancelled = threading.Event()

    class Stalled:
        async def retrieve(self, query: str) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

    llm = AsyncLLM()
    rag = StreamingRAG(Stalled(), llm=llm, config=cfg(retrieval_timeout=TINY))
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [EventType.RETRIEVAL_START, EventType.ERROR]
    assert events[-1].data == RETRIEVAL_TIMEOUT
    assert cancelled.is_set()  # the stalled retriever was cancelled, not leaked
    assert llm.prompts == []  # generation never started


async def test_sync_retrieval_timeout_exact_payload() -> None:
    release = threading.Event()

    class Blocked:
        def retrieve(self, query: str) -> list[str]:
            release.wait(WAIT_S)
            return ["late"]

    rag = StreamingRAG(Blocked(), llm=AsyncLLM(), config=cfg(retrieval_timeout=TINY))
    try:
        events = await acollect(rag.astream_events("q"))
    finally:
        release.set()
    assert types(events) == [EventType.RETRIEVAL_START, EventType.ERROR]
    assert events[-1].data == RETRIEVAL_TIMEOUT


def test_retrieval_timeout_via_sync_surface() -> None:
    class Stalled:
        async def retrieve(self, query: str) -> None:
            await asyncio.Event().wait()

    rag = StreamingRAG(Stalled(), llm=AsyncLLM(), config=cfg(retrieval_timeout=TINY))
    result = rag.query("q")
    assert [e.data for e in result["events"]] == [{"query": "q"}, RETRIEVAL_TIMEOUT]
    assert result["answer"] == ""


@pytest.mark.parametrize("is_async", [True, False])
async def test_retrieval_exception_message(is_async: bool) -> None:
    class Broken:
        async def aretrieve(self, query: str) -> None:
            raise ConnectionError("vector db unreachable")

        def sretrieve(self, query: str) -> None:
            raise ConnectionError("vector db unreachable")

    backend = Broken()
    backend.retrieve = backend.aretrieve if is_async else backend.sretrieve  # type: ignore
    rag = StreamingRAG(backend, llm=AsyncLLM())
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [EventType.RETRIEVAL_START, EventType.ERROR]
    assert events[-1].data == {"msg": "vector db unreachable", "stage": "retrieval"}


async def test_retrieval_exception_with_empty_message_gives_type_name() -> None:
    class QuietError(Exception):
        pass

    class Broken:
        async def retrieve(self, query: str) -> None:
            raise QuietError()

    rag = StreamingRAG(Broken(), llm=AsyncLLM())
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "QuietError", "stage": "retrieval"}


async def test_retriever_raising_timeout_error_is_not_reported_as_our_timeout() -> None:
    class Broken:
        async def retrieve(self, query: str) -> None:
            raise TimeoutError("upstream search timed out after 3s")

    rag = StreamingRAG(Broken(), llm=AsyncLLM())
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "upstream search timed out after 3s", "stage": "retrieval"}


async def test_normalisation_failure_is_a_retrieval_error() -> None:
    class BadIterable:
        def __iter__(self):
            raise RuntimeError("cannot iterate hits")

    rag = StreamingRAG(SyncBackend(docs=BadIterable()), llm=AsyncLLM())
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "cannot iterate hits", "stage": "retrieval"}


# -- generation -----------------------------------------------------------------------------
async def test_stalled_async_llm_is_cut_at_the_deadline() -> None:
    llm = AsyncLLM(["a", "b", "c"], stall_after=2)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, config=cfg(generation_timeout=TINY))
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [*HAPPY, EventType.CHUNK, EventType.CHUNK, EventType.ERROR]
    assert chunks(events) == ["a", "b"]
    assert events[-1].data == GENERATION_TIMEOUT
    assert llm.stalled.is_set()
    assert llm.closed.is_set()


async def test_stall_before_first_token_is_cut() -> None:
    llm = AsyncLLM(["never"], stall_after=0)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, config=cfg(generation_timeout=TINY))
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [*HAPPY, EventType.ERROR]
    assert events[-1].data == GENERATION_TIMEOUT


async def test_stalled_sync_llm_is_cut_at_the_deadline() -> None:
    llm = SyncLLM(["a", "b"], block_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, config=cfg(generation_timeout=TINY))
    try:
        events = await acollect(rag.astream_events("q"))
    finally:
        llm.release.set()
    assert chunks(events) == ["a"]
    assert events[-1].data == GENERATION_TIMEOUT
    assert llm.closed.wait(WAIT_S)  # the thread closes the generator once it wakes up


async def test_stalled_generate_is_cut_at_the_deadline() -> None:
    class Slow:
        async def retrieve(self, query: str) -> list:
            return []

        async def generate(self, query: str, context: dict) -> str:
            await asyncio.Event().wait()
            return "never"

    rag = StreamingRAG(Slow(), config=cfg(generation_timeout=TINY))
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [*HAPPY, EventType.ERROR]
    assert events[-1].data == GENERATION_TIMEOUT


async def test_deadline_is_for_the_whole_generation_not_per_token() -> None:
    """Each token arrives well within the timeout, but together they exceed it."""
    step = asyncio.Event()  # never set: each token waits for a short loop timer instead

    class Trickle:
        async def astream(self, prompt: str):
            for i in range(1000):
                try:
                    await asyncio.wait_for(step.wait(), TINY / 5)
                except TimeoutError:
                    pass
                yield f"{i} "

    rag = StreamingRAG(RetrieveOnly(), llm=Trickle(), config=cfg(generation_timeout=TINY))
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == GENERATION_TIMEOUT
    assert len(chunks(events)) < 1000  # every token came well within the timeout


async def test_deadline_holds_when_each_event_is_fetched_in_a_new_task() -> None:
    """Consumers often use `asyncio.wait_for(agen.__anext__(), t)` (a new task per call on
    Python 3.11); the stalled LLM must still be cut by generation_timeout."""
    llm = AsyncLLM(["a", "b"], stall_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, config=cfg(generation_timeout=TINY))
    agen = rag.astream_events("q")
    events = []
    task: asyncio.Future | None = None
    try:
        while True:
            task = asyncio.ensure_future(agen.__anext__())
            done, _ = await asyncio.wait({task}, timeout=WAIT_S)
            assert task in done, "the stalled LLM was not cut at the generation deadline"
            try:
                events.append(task.result())
            except StopAsyncIteration:
                break
    finally:
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await agen.aclose()
    assert chunks(events) == ["a"]
    assert events[-1].data == GENERATION_TIMEOUT


@pytest.mark.parametrize("strategy", ["async", "sync", "sim"])
async def test_generation_exception_message(strategy: str) -> None:
    exc = RuntimeError("model overloaded")
    if strategy == "async":
        rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a", "b"], fail_after=(1, exc)))
    elif strategy == "sync":
        rag = StreamingRAG(RetrieveOnly(), llm=SyncLLM(["a", "b"], fail_after=(1, exc)))
    else:

        class Failing(SyncBackend):
            def generate(self, query: str, context: Any) -> str:
                raise exc

        rag = StreamingRAG(Failing(), config=cfg())
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "model overloaded", "stage": "generation"}
    assert [e.type for e in events].count(EventType.ERROR) == 1
    assert chunks(events) == ([] if strategy == "sim" else ["a"])


@pytest.mark.parametrize("strategy", ["async", "sync"])
async def test_generation_exception_with_empty_message_gives_type_name(strategy: str) -> None:
    llm_cls = AsyncLLM if strategy == "async" else SyncLLM
    rag = StreamingRAG(RetrieveOnly(), llm=llm_cls(["a"], fail_after=(0, KeyError())))
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "KeyError", "stage": "generation"}


async def test_llm_raising_timeout_error_keeps_its_own_message() -> None:
    llm = AsyncLLM(["a"], fail_after=(1, TimeoutError("http read timeout")))
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "http read timeout", "stage": "generation"}


async def test_llm_astream_call_itself_raising_is_a_generation_error() -> None:
    class Exploding:
        def astream(self, prompt: str):
            raise ValueError("bad api key")

    rag = StreamingRAG(RetrieveOnly(), llm=Exploding())
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [*HAPPY, EventType.ERROR]
    assert events[-1].data == {"msg": "bad api key", "stage": "generation"}


async def test_nothing_follows_error_even_if_llm_would_continue() -> None:
    it = ClosableAsyncIterator(["a"], error=RuntimeError("boom"))
    rag = StreamingRAG(RetrieveOnly(), llm=ClassAsyncLLM(it))
    agen = rag.astream_events("q")
    events = [e async for e in agen]
    assert events[-1].type is EventType.ERROR
    with pytest.raises(StopAsyncIteration):
        await agen.__anext__()
    assert rag.stats["total_errors"] == 1


async def test_slow_consumer_holding_an_event_is_not_cancelled_by_the_deadline() -> None:
    llm = AsyncLLM(["a", "b", "c"])
    rag = StreamingRAG(RetrieveOnly(), llm=llm, config=cfg(generation_timeout=TINY))
    events = []
    async for event in rag.astream_events("q"):
        events.append(event)
        if event.is_chunk and event.data == "a":
            # hold the event past the deadline; this await must not be cancelled
            await asyncio.sleep(TINY * 3)
    assert chunks(events) == ["a"]
    assert events[-1].data == GENERATION_TIMEOUT  # the deadline is honoured afterwards
    assert llm.closed.is_set()
    assert asyncio.current_task().cancelling() == 0


async def test_consumer_cancellation_is_not_swallowed_as_timeout() -> None:
    llm = AsyncLLM(["a"], stall_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)  # default 60 s deadline
    got_chunk = asyncio.Event()

    async def consume() -> None:
        async for event in rag.astream_events("q"):
            if event.is_chunk:
                got_chunk.set()

    task = asyncio.create_task(consume())
    await got_chunk.wait()
    assert await asyncio.to_thread(llm.stalled.wait, WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert llm.closed.is_set()
    assert rag.stats["total_errors"] == 0
