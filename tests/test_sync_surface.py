"""§3.2 sync surface: stream_events on a private loop in a daemon thread over a queue.Queue."""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any

import pytest
from helpers_core import WAIT_S, AsyncLLM, RetrieveOnly, SyncBackend, SyncLLM, chunks, types

import streaming_rag._sync_bridge as bridge
from streaming_rag import EventType, StreamConfig, StreamEvent, StreamingRAG


class Boom(Exception):
    pass


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before]


def test_stream_yields_only_chunk_texts() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["What ", "is ", "RAG?"]))
    out = list(rag.stream("What is retrieval-augmented generation?"))
    assert out == ["What ", "is ", "RAG?"]
    assert all(type(x) is str for x in out)


def test_stream_events_yields_all_events_in_order() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a", "b"]))
    events = list(rag.stream_events("q"))
    assert all(isinstance(e, StreamEvent) for e in events)
    assert types(events) == [
        EventType.RETRIEVAL_START,
        EventType.RETRIEVAL_DONE,
        EventType.GENERATION_START,
        EventType.CHUNK,
        EventType.CHUNK,
        EventType.GENERATION_DONE,
    ]
    assert events[0].latency == 0.0


def test_stream_events_runs_in_a_daemon_thread_with_its_own_loop() -> None:
    seen: dict[str, Any] = {}

    class Probe:
        async def astream(self, prompt: str):
            seen["thread"] = threading.current_thread()
            seen["loop"] = asyncio.get_running_loop()
            yield "x"

    rag = StreamingRAG(RetrieveOnly(), llm=Probe())
    assert list(rag.stream("q")) == ["x"]
    assert seen["thread"] is not threading.current_thread()
    assert seen["thread"].daemon
    assert seen["loop"].is_closed()  # the private loop is closed afterwards
    assert not seen["thread"].is_alive()  # and its thread already joined


def test_events_cross_a_blocking_stdlib_queue_with_none_sentinel(monkeypatch) -> None:
    instances: list[Any] = []

    class RecordingQueue(queue.Queue):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.put_items: list[Any] = []
            self.get_calls: list[tuple] = []
            instances.append(self)

        def put(self, item: Any, *a: Any, **kw: Any) -> None:
            self.put_items.append(item)
            super().put(item, *a, **kw)

        def get(self, *a: Any, **kw: Any) -> Any:
            self.get_calls.append((a, kw))
            return super().get(*a, **kw)

    monkeypatch.setattr(bridge.queue, "Queue", RecordingQueue)
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a", "b"]))
    events = list(rag.stream_events("q"))
    (q,) = instances
    # events cross in batches (what the loop produced while the consumer was busy), in order
    assert all(isinstance(batch, list) and batch for batch in q.put_items[:-1])
    assert [e for batch in q.put_items[:-1] for e in batch] == events
    assert q.put_items[-1] is None
    # blocking get: no timeout, no block=False, i.e. no polling; at most one get per put
    assert all(a in ((), (True,)) and kw in ({}, {"block": True}) for a, kw in q.get_calls)
    assert 1 <= len(q.get_calls) <= len(q.put_items)


def test_sync_llm_through_sync_surface() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=SyncLLM(["s", "y", "n", "c"]))
    assert "".join(rag.stream("q")) == "sync"


def test_simulation_through_sync_surface() -> None:
    rag = StreamingRAG(
        SyncBackend(answer="a b c d e"), config=StreamConfig(chunk_size=2, sim_delay=0)
    )
    assert list(rag.stream("q")) == ["a b ", "c d ", "e"]


def test_error_events_are_yielded_not_raised() -> None:
    class Broken:
        def retrieve(self, q: str) -> None:
            raise RuntimeError("down")

    rag = StreamingRAG(Broken(), llm=AsyncLLM())
    events = list(rag.stream_events("q"))
    assert events[-1].data == {"msg": "down", "stage": "retrieval"}
    assert list(StreamingRAG(Broken(), llm=AsyncLLM()).stream("q")) == []


def test_exception_reraises_in_caller_thread_with_original_type_and_object() -> None:
    raised: list[BaseException] = []
    where: list[threading.Thread] = []

    def on_event(event: StreamEvent) -> None:
        if event.type is EventType.GENERATION_START:
            where.append(threading.current_thread())
            exc = Boom("from the background thread")
            raised.append(exc)
            raise exc

    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(), on_event=on_event)
    got: list[EventType] = []
    with pytest.raises(Boom) as info:
        for event in rag.stream_events("q"):
            got.append(event.type)
    assert info.value is raised[0]
    assert where[0] is not threading.current_thread()
    assert got == [EventType.RETRIEVAL_START, EventType.RETRIEVAL_DONE]


def test_base_exception_subclass_keeps_its_type() -> None:
    class Stop(BaseException):
        pass

    def on_chunk(text: str) -> None:
        raise Stop

    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a"]), on_chunk=on_chunk)
    with pytest.raises(Stop):
        rag.query("q")


def test_break_cancels_promptly_closes_llm_and_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    llm = AsyncLLM(["first", "never"], stall_after=1)  # would wait forever after one token
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    for event in rag.stream_events("q"):
        if event.is_chunk:
            assert event.data == "first"
            break
    # returning from the break at all proves the stalled stream was cancelled
    assert llm.closed.is_set()
    assert new_threads(before) == []
    assert threading.active_count() == len(before)


def test_break_from_stream_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    llm = AsyncLLM([f"{i}" for i in range(100)], stall_after=3)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    got = []
    for text in rag.stream("q"):
        got.append(text)
        if len(got) == 2:
            break
    assert got == ["0", "1"]
    assert llm.closed.is_set()
    assert new_threads(before) == []


def test_break_with_sync_llm_leaves_no_thread_once_llm_returns() -> None:
    before = set(threading.enumerate())
    llm = SyncLLM(["a", "b", "c"], block_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    for event in rag.stream_events("q"):
        if event.is_chunk:
            assert llm.entered_block.wait(WAIT_S)
            break
    bridge_threads = [t for t in new_threads(before) if t.name == "streaming-rag-stream"]
    assert bridge_threads == []  # the bridge thread was joined by the break itself
    llm.release.set()  # the LLM thread is blocked inside next(); let it return
    leftover = new_threads(before)
    for t in leftover:
        t.join(WAIT_S)
    assert [t for t in leftover if t.is_alive()] == []
    assert llm.closed.is_set()


def test_garbage_collected_generator_cleans_up() -> None:
    before = set(threading.enumerate())
    llm = AsyncLLM(["a", "b"], stall_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    gen = rag.stream_events("q")
    assert next(gen).type is EventType.RETRIEVAL_START
    del gen
    assert llm.closed.wait(WAIT_S)
    leftover = new_threads(before)
    for t in leftover:
        t.join(WAIT_S)
    assert [t for t in leftover if t.is_alive()] == []


def test_full_run_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a"]))
    for _ in range(5):
        assert rag.query("q")["answer"] == "a"
    assert new_threads(before) == []


def test_private_loops_are_closed(monkeypatch) -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    real_new = asyncio.new_event_loop

    def recording_new() -> asyncio.AbstractEventLoop:
        loop = real_new()
        loops.append(loop)
        return loop

    monkeypatch.setattr(bridge.asyncio, "new_event_loop", recording_new)
    llm = AsyncLLM(["a", "b"], stall_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    for event in rag.stream_events("q"):
        if event.is_chunk:
            break
    rag2 = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["z"]))
    assert rag2.query("q")["answer"] == "z"
    assert len(loops) == 2
    assert all(loop.is_closed() for loop in loops)


# -- called from inside a running event loop ---------------------------------------------------
async def test_query_inside_running_loop() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["in ", "loop"]))
    result = rag.query("q")
    assert result["answer"] == "in loop"
    assert result["events"][-1].type is EventType.GENERATION_DONE


async def test_stream_and_stream_events_inside_running_loop() -> None:
    outer = asyncio.get_running_loop()
    rag = StreamingRAG(RetrieveOnly(), llm=SyncLLM(["x", "y"]))
    assert list(rag.stream("q")) == ["x", "y"]
    events = list(rag.stream_events("q"))
    assert chunks(events) == ["x", "y"]
    assert asyncio.get_running_loop() is outer and not outer.is_closed()


async def test_simulation_query_inside_running_loop() -> None:
    rag = StreamingRAG(SyncBackend(answer="sim in loop"), config=StreamConfig(sim_delay=0))
    assert rag.query("q")["answer"] == "sim in loop"


async def test_break_inside_running_loop_still_cleans_up() -> None:
    before = set(threading.enumerate())
    llm = AsyncLLM(["a", "b"], stall_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    for _ in rag.stream("q"):
        break
    assert llm.closed.is_set()
    assert new_threads(before) == []
