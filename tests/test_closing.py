"""§3.4 step 8: the LLM stream is always closed — completion, error, timeout, early stop —
on the async and the sync surfaces, including a sync LLM whose thread is mid-iteration."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing
from typing import Any

import pytest
from helpers_core import (
    WAIT_S,
    AsyncLLM,
    ClassAsyncLLM,
    ClassSyncLLM,
    ClosableAsyncIterator,
    ClosableIterator,
    RetrieveOnly,
    SyncLLM,
    acollect,
    chunks,
)

from streaming_rag import EventType, StreamConfig, StreamEvent, StreamingRAG


class TerminalProbe:
    """on_event hook recording whether `closed` was already set at the terminal event."""

    def __init__(self, closed: threading.Event) -> None:
        self.closed = closed
        self.at_terminal: list[tuple[EventType, bool]] = []

    def __call__(self, event: StreamEvent) -> None:
        if event.type in (EventType.GENERATION_DONE, EventType.ERROR):
            self.at_terminal.append((event.type, self.closed.is_set()))


# -- async LLM (strategy 1) -------------------------------------------------------------------
async def test_async_closed_before_done_on_completion() -> None:
    it = ClosableAsyncIterator(["a", "b"])
    probe = TerminalProbe(it.closed)
    rag = StreamingRAG(RetrieveOnly(), llm=ClassAsyncLLM(it), on_event=probe)
    events = await acollect(rag.astream_events("q"))
    assert chunks(events) == ["a", "b"]
    assert probe.at_terminal == [(EventType.GENERATION_DONE, True)]
    assert it.aclose_calls == 1


async def test_async_closed_before_error_on_exception() -> None:
    it = ClosableAsyncIterator(["a"], error=RuntimeError("x"))
    probe = TerminalProbe(it.closed)
    rag = StreamingRAG(RetrieveOnly(), llm=ClassAsyncLLM(it), on_event=probe)
    await acollect(rag.astream_events("q"))
    assert probe.at_terminal == [(EventType.ERROR, True)]
    assert it.aclose_calls == 1


async def test_async_closed_before_error_on_timeout() -> None:
    it = ClosableAsyncIterator(["a"], stall=True)
    probe = TerminalProbe(it.closed)
    rag = StreamingRAG(
        RetrieveOnly(),
        llm=ClassAsyncLLM(it),
        config=StreamConfig(generation_timeout=0.05),
        on_event=probe,
    )
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "Generation timed out", "stage": "generation"}
    assert probe.at_terminal == [(EventType.ERROR, True)]
    assert it.aclose_calls == 1


async def test_async_generator_llm_finally_runs_on_completion() -> None:
    llm = AsyncLLM(["a"])
    probe = TerminalProbe(llm.closed)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, on_event=probe)
    await acollect(rag.astream_events("q"))
    assert probe.at_terminal == [(EventType.GENERATION_DONE, True)]


async def test_async_consumer_break_with_aclosing() -> None:
    llm = AsyncLLM(["a", "b", "c"])
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    async with aclosing(rag.astream_events("q")) as events:
        async for event in events:
            if event.is_chunk:
                break
    assert llm.closed.is_set()
    assert llm.threads == [threading.get_ident()]  # only one token was ever produced


async def test_async_consumer_plain_break_closes_via_finaliser() -> None:
    it = ClosableAsyncIterator(["a", "b", "c"])
    rag = StreamingRAG(RetrieveOnly(), llm=ClassAsyncLLM(it))
    async for event in rag.astream_events("q"):
        if event.is_chunk:
            break
    # the loop's async-generator finaliser schedules aclose(); wait for it without sleeping
    assert await asyncio.to_thread(it.closed.wait, WAIT_S)
    assert it.aclose_calls == 1


async def test_astream_break_closes_llm() -> None:
    llm = AsyncLLM(["a", "b", "c"], stall_after=2)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    async with aclosing(rag.astream("q")) as texts:
        async for text in texts:
            assert text == "a"
            break
    assert llm.closed.is_set()
    assert not llm.stalled.is_set()


async def test_async_closed_when_callback_raises() -> None:
    class Boom(Exception):
        pass

    def on_chunk(text: str) -> None:
        raise Boom

    it = ClosableAsyncIterator(["a", "b"])
    rag = StreamingRAG(RetrieveOnly(), llm=ClassAsyncLLM(it), on_chunk=on_chunk)
    with pytest.raises(Boom):
        await acollect(rag.astream_events("q"))
    assert it.aclose_calls == 1


async def test_aclose_raising_does_not_break_the_stream() -> None:
    class BadClose(ClosableAsyncIterator):
        async def aclose(self) -> None:
            await super().aclose()
            raise RuntimeError("close failed")

    it = BadClose(["a"])
    rag = StreamingRAG(RetrieveOnly(), llm=ClassAsyncLLM(it))
    events = await acollect(rag.astream_events("q"))
    assert events[-1].type is EventType.GENERATION_DONE
    assert it.aclose_calls == 1


# -- sync LLM (strategy 2) ------------------------------------------------------------------
async def test_sync_closed_before_done_on_completion() -> None:
    done_seen = threading.Event()

    class SlowClose(ClosableIterator):
        def close(self) -> None:
            # if the terminal event could overtake close(), it would arrive while we wait
            done_seen.wait(0.2)
            super().close()

    it = SlowClose(["a", "b"])
    probe = TerminalProbe(it.closed)

    def on_event(event: StreamEvent) -> None:
        probe(event)
        if event.type is EventType.GENERATION_DONE:
            done_seen.set()

    rag = StreamingRAG(RetrieveOnly(), llm=ClassSyncLLM(it), on_event=on_event)
    events = await acollect(rag.astream_events("q"))
    assert chunks(events) == ["a", "b"]
    assert probe.at_terminal == [(EventType.GENERATION_DONE, True)]
    assert it.close_calls == 1


async def test_sync_closed_before_error_on_exception() -> None:
    it = ClosableIterator(["a"], error=RuntimeError("sync boom"))
    probe = TerminalProbe(it.closed)
    rag = StreamingRAG(RetrieveOnly(), llm=ClassSyncLLM(it), on_event=probe)
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "sync boom", "stage": "generation"}
    assert probe.at_terminal == [(EventType.ERROR, True)]
    assert it.close_calls == 1


async def test_sync_generator_closed_on_timeout_when_thread_wakes() -> None:
    llm = SyncLLM(["a", "b", "c"], block_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, config=StreamConfig(generation_timeout=0.05))
    events = await acollect(rag.astream_events("q"))
    assert events[-1].data == {"msg": "Generation timed out", "stage": "generation"}
    assert not llm.closed.is_set()  # still blocked inside next()
    llm.release.set()
    assert llm.closed.wait(WAIT_S)
    assert chunks(events) == ["a"]


async def test_sync_llm_mid_iteration_when_async_consumer_breaks() -> None:
    llm = SyncLLM(["a", "b", "c", "d"], block_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    async with aclosing(rag.astream_events("q")) as events:
        async for event in events:
            if event.is_chunk:
                assert await asyncio.to_thread(llm.entered_block.wait, WAIT_S)
                break  # the LLM thread is inside next(), blocked
    assert not llm.closed.is_set()
    llm.release.set()
    assert llm.closed.wait(WAIT_S)  # closed by the thread as soon as next() returned
    # the thread stops after the token it was producing: never asks for "c" or "d"
    (thread,) = set(llm.thread_objects)
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert len(llm.threads) == 2


def test_sync_llm_mid_iteration_when_sync_consumer_breaks() -> None:
    llm = SyncLLM(["a", "b", "c", "d"], block_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    for event in rag.stream_events("q"):
        if event.is_chunk:
            assert llm.entered_block.wait(WAIT_S)
            break
    assert not llm.closed.is_set()
    llm.release.set()
    assert llm.closed.wait(WAIT_S)
    (thread,) = set(llm.thread_objects)
    thread.join(WAIT_S)
    assert not thread.is_alive()
    assert len(llm.threads) == 2


def test_sync_llm_closed_on_stream_break() -> None:
    llm = SyncLLM([f"{i} " for i in range(50)])
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    for _ in rag.stream("q"):
        break
    assert llm.closed.wait(WAIT_S)


def test_sync_llm_close_raising_is_ignored() -> None:
    class BadClose(ClosableIterator):
        def close(self) -> None:
            super().close()
            raise RuntimeError("close failed")

    it = BadClose(["x"])
    rag = StreamingRAG(RetrieveOnly(), llm=ClassSyncLLM(it))
    result = rag.query("q")
    assert result["answer"] == "x"
    assert result["events"][-1].type is EventType.GENERATION_DONE
    assert it.close_calls == 1


# -- async LLM through the sync surface ------------------------------------------------------
@pytest.mark.parametrize("surface", ["stream_events", "stream"])
def test_sync_surface_break_closes_async_llm(surface: str) -> None:
    llm = AsyncLLM(["a", "b", "c"], stall_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    for item in getattr(rag, surface)("q"):
        if surface == "stream" or item.is_chunk:
            break
    # closing the generator joins the background thread, so the close already happened
    assert llm.closed.is_set()


def test_sync_surface_explicit_close() -> None:
    llm = AsyncLLM(["a", "b"], stall_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    gen = rag.stream_events("q")
    assert next(gen).type is EventType.RETRIEVAL_START
    gen.close()
    assert llm.closed.is_set()


@pytest.mark.parametrize("how", ["done", "error", "timeout"])
def test_sync_surface_closes_on_every_ending(how: str) -> None:
    kw: dict[str, Any] = {}
    if how == "error":
        kw["fail_after"] = (1, RuntimeError("e"))
    if how == "timeout":
        kw["stall_after"] = 1
    llm = AsyncLLM(["a", "b"], **kw)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, config=StreamConfig(generation_timeout=0.05))
    result = rag.query("q")
    last = result["events"][-1]
    assert last.type is (EventType.GENERATION_DONE if how == "done" else EventType.ERROR)
    assert llm.closed.is_set()
