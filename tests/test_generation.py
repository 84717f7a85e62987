"""§7 Generation strategies 1 (async LLM), 2 (sync LLM in one thread), 3 (simulation)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from helpers_core import (
    WAIT_S,
    AsyncBackend,
    AsyncLLM,
    RetrieveOnly,
    SyncBackend,
    SyncLLM,
    acollect,
    chunks,
    types,
)

import streaming_rag._generation as generation
from streaming_rag import EventType, StreamConfig, StreamingRAG


def sim(answer: Any, **cfg: Any) -> tuple[StreamingRAG, SyncBackend]:
    cfg.setdefault("sim_delay", 0)
    backend = SyncBackend(answer=answer)
    return StreamingRAG(backend, config=StreamConfig(**cfg)), backend


# -- strategy 1 -----------------------------------------------------------------------------
async def test_strategy1_tokens_pass_through_unchanged() -> None:
    tokens = ["The ", "quick brown fox jumps over the lazy dog and more words here ", "!"]
    llm = AsyncLLM(tokens)
    rag = StreamingRAG(RetrieveOnly(), llm=llm, chunk_size=2)  # chunk_size not applied
    events = await acollect(rag.astream_events("q"))
    assert chunks(events) == tokens
    assert len(llm.prompts) == 1
    assert llm.threads == [threading.get_ident()] * 3


async def test_strategy1_none_tokens_skipped_and_non_str_stringified() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM([1, None, "x", 2.5, None]))
    events = await acollect(rag.astream_events("q"))
    assert chunks(events) == ["1", "x", "2.5"]
    assert all(type(c) is str for c in chunks(events))
    assert rag.stats["total_chunks"] == 3


async def test_strategy1_empty_string_token_is_a_chunk() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["", "a"]))
    assert chunks(await acollect(rag.astream_events("q"))) == ["", "a"]


# -- strategy 2 -----------------------------------------------------------------------------
async def test_strategy2_uses_one_dedicated_thread_per_stream() -> None:
    llm = SyncLLM([f"t{i} " for i in range(6)])
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    events = await acollect(rag.astream_events("q"))
    assert chunks(events) == [f"t{i} " for i in range(6)]
    assert len(llm.prompts) == 1
    assert len(set(llm.threads)) == 1
    assert llm.threads[0] != threading.get_ident()
    # a dedicated thread ends with the stream (an executor worker would stay alive)
    (thread,) = set(llm.thread_objects)
    assert thread.daemon
    thread.join(WAIT_S)
    assert not thread.is_alive()


async def test_strategy2_each_stream_gets_its_own_thread() -> None:
    llm = SyncLLM(["a", "b"], block_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)

    async def run() -> list:
        return await acollect(rag.astream_events("q"))

    first = asyncio.create_task(run())
    # the first stream's thread is parked inside the LLM; a second stream must not wait for it
    assert await asyncio.to_thread(llm.entered_block.wait, WAIT_S)
    llm2 = SyncLLM(["c"])
    rag2 = StreamingRAG(RetrieveOnly(), llm=llm2)
    assert chunks(await acollect(rag2.astream_events("q"))) == ["c"]
    llm.release.set()
    assert chunks(await first) == ["a", "b"]
    assert len(set(llm.threads)) == 1
    assert set(llm.threads).isdisjoint({threading.get_ident()})


async def test_strategy2_does_not_block_the_loop() -> None:
    """The sync LLM waits on an Event that only a task on the loop can set."""
    llm = SyncLLM(["a", "b", "c"], block_after=1)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)

    async def releaser() -> None:
        assert await asyncio.to_thread(llm.entered_block.wait, WAIT_S)
        llm.release.set()

    task = asyncio.create_task(releaser())
    events = await acollect(rag.astream_events("q"))
    await task
    assert chunks(events) == ["a", "b", "c"]
    assert events[-1].type is EventType.GENERATION_DONE


async def test_strategy2_none_and_non_str_tokens() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=SyncLLM([None, 3, "z"]))
    assert chunks(await acollect(rag.astream_events("q"))) == ["3", "z"]


async def test_strategy2_many_tokens_in_order() -> None:
    tokens = [f"{i} " for i in range(10_000)]
    rag = StreamingRAG(RetrieveOnly(), llm=SyncLLM(tokens))
    assert chunks(await acollect(rag.astream_events("q"))) == tokens


# -- strategy 3 -----------------------------------------------------------------------------
async def test_strategy3_chunks_of_chunk_size_words() -> None:
    rag, backend = sim("one two three four five six seven", chunk_size=3)
    events = await acollect(rag.astream_events("the q"))
    assert chunks(events) == ["one two three ", "four five six ", "seven"]
    assert backend.generate_calls == [("the q", {})]


@pytest.mark.parametrize(
    "answer",
    [
        "  leading spaces then words",
        "trailing spaces   ",
        "tabs\tand\nnewlines\n\n  mixed   spacing ",
        "single",
        "   ",
        "مرحبا بكم في عالم التوليد المعزز بالاسترجاع",
    ],
)
@pytest.mark.parametrize("size", [1, 2, 5])
async def test_strategy3_concatenation_is_exactly_the_answer(answer: str, size: int) -> None:
    rag, _ = sim(answer, chunk_size=size)
    out = chunks(await acollect(rag.astream_events("q")))
    assert "".join(out) == answer
    assert all(len(c.split()) <= size for c in out)
    assert len(out) == max(1, -(-len(answer.split()) // size))


async def test_strategy3_empty_answer_gives_no_chunks() -> None:
    rag, _ = sim("")
    events = await acollect(rag.astream_events("q"))
    assert types(events)[-2:] == [EventType.GENERATION_START, EventType.GENERATION_DONE]


async def test_strategy3_sim_delay_between_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    trace: list[tuple[str, Any]] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        trace.append(("sleep", delay))
        return await real_sleep(0)

    monkeypatch.setattr(generation.asyncio, "sleep", fake_sleep)
    backend = SyncBackend(answer="a b c d e f g")
    rag = StreamingRAG(
        backend,
        config=StreamConfig(chunk_size=3, sim_delay=0.25),
        on_chunk=lambda c: trace.append(("chunk", c)),
    )
    await acollect(rag.astream_events("q"))
    assert trace == [
        ("chunk", "a b c "),
        ("sleep", 0.25),
        ("chunk", "d e f "),
        ("sleep", 0.25),
        ("chunk", "g"),
    ]


async def test_strategy3_zero_sim_delay_requests_no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        slept.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(generation.asyncio, "sleep", fake_sleep)
    rag, _ = sim("a b c d", chunk_size=1, sim_delay=0)
    assert len(chunks(await acollect(rag.astream_events("q")))) == 4
    assert slept == []


@pytest.mark.parametrize(
    "result",
    [
        {"answer": "from dict"},
        {"answer": "from dict", "sources": ["x"]},
        {"response": "from dict"},
        {"text": "from dict"},
        {"content": "from dict"},
    ],
)
async def test_strategy3_dict_answer(result: dict) -> None:
    rag, _ = sim(result, chunk_size=100)
    assert chunks(await acollect(rag.astream_events("q"))) == ["from dict"]


async def test_strategy3_answer_key_preferred() -> None:
    rag, _ = sim({"text": "no", "answer": "yes"}, chunk_size=100)
    assert chunks(await acollect(rag.astream_events("q"))) == ["yes"]


async def test_strategy3_dict_without_answer_is_a_generation_error() -> None:
    rag, _ = sim({"foo": "bar"})
    events = await acollect(rag.astream_events("q"))
    assert events[-1].type is EventType.ERROR
    assert events[-1].data["stage"] == "generation"
    assert "answer" in events[-1].data["msg"]


async def test_strategy3_message_object_answer() -> None:
    class Message:
        content = "from message"

    rag, _ = sim(Message(), chunk_size=100)
    assert chunks(await acollect(rag.astream_events("q"))) == ["from message"]


async def test_strategy3_none_answer_is_empty() -> None:
    rag, _ = sim(None)
    events = await acollect(rag.astream_events("q"))
    assert chunks(events) == []
    assert events[-1].type is EventType.GENERATION_DONE


async def test_strategy3_sync_generate_runs_off_loop_and_gets_context() -> None:
    rag, backend = sim("x")
    ctx = {"user": "u1"}
    await acollect(rag.astream_events("q", ctx))
    assert backend.generate_calls == [("q", ctx)]
    assert backend.generate_threads[0] != threading.get_ident()


async def test_strategy3_async_generate() -> None:
    backend = AsyncBackend(answer={"answer": "async gen answer"})
    rag = StreamingRAG(backend, config=StreamConfig(sim_delay=0, chunk_size=2))
    events = await acollect(rag.astream_events("q", {"k": 1}))
    assert chunks(events) == ["async gen ", "answer"]
    assert backend.generate_calls == [("q", {"k": 1})]


async def test_strategy3_context_none_is_forwarded_as_empty_dict() -> None:
    backend = AsyncBackend(answer="x")
    rag = StreamingRAG(backend, config=StreamConfig(sim_delay=0))
    await acollect(rag.astream_events("q"))
    assert backend.generate_calls == [("q", {})]
    assert type(backend.generate_calls[0][1]) is dict


async def test_context_not_forwarded_to_streaming_llm() -> None:
    backend = SyncBackend()
    llm = AsyncLLM(["a"])
    rag = StreamingRAG(backend, llm=llm)
    await acollect(rag.astream_events("q", {"k": "v"}))
    assert backend.generate_calls == []
    assert len(llm.prompts) == 1


# -- no generator at all ------------------------------------------------------------------
async def test_no_generator_raises_attribute_error_before_any_event() -> None:
    seen: list = []
    rag = StreamingRAG(RetrieveOnly(), on_event=seen.append, on_chunk=seen.append)
    assert repr(rag) == "StreamingRAG(llm=sim, chunk_size=10)"
    agen = rag.astream_events("q")
    with pytest.raises(AttributeError) as info:
        await agen.__anext__()
    msg = str(info.value)
    assert "SyncStreamableLLM" in msg
    assert "AsyncStreamableLLM" in msg
    assert seen == []
    assert rag.stats == {
        "total_streams": 0,
        "total_chunks": 0,
        "total_errors": 0,
        "avg_stream_latency_s": 0.0,
    }


def test_no_generator_raises_on_every_sync_surface() -> None:
    seen: list = []
    rag = StreamingRAG(RetrieveOnly(), on_event=seen.append)
    with pytest.raises(AttributeError, match="SyncStreamableLLM"):
        next(rag.stream_events("q"))
    with pytest.raises(AttributeError, match="AsyncStreamableLLM"):
        list(rag.stream("q"))
    with pytest.raises(AttributeError):
        rag.query("q")
    assert seen == []
    assert rag.stats["total_streams"] == 0


async def test_no_generator_on_astream() -> None:
    rag = StreamingRAG(RetrieveOnly())
    with pytest.raises(AttributeError, match="SyncStreamableLLM"):
        await acollect(rag.astream("q"))


async def test_no_generator_with_non_streamable_rag_system_llm() -> None:
    backend = RetrieveOnly()
    backend.llm = object()  # type: ignore[attr-defined]
    rag = StreamingRAG(backend)
    with pytest.raises(AttributeError, match="AsyncStreamableLLM"):
        await acollect(rag.astream_events("q"))
