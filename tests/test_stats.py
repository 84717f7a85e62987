"""§3.5 stats: exact counters, average over completed streams only, concurrency-safe."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing

import pytest
from helpers_core import AsyncLLM, FakeClock, RetrieveOnly, SyncBackend, SyncLLM, acollect

import streaming_rag._pipeline as pipeline
from streaming_rag import StreamConfig, StreamingRAG

KEYS = {"total_streams", "total_chunks", "total_errors", "avg_stream_latency_s"}


def test_zero_before_any_stream() -> None:
    rag = StreamingRAG(SyncBackend())
    stats = rag.stats
    assert stats == {
        "total_streams": 0,
        "total_chunks": 0,
        "total_errors": 0,
        "avg_stream_latency_s": 0.0,
    }
    assert type(stats["avg_stream_latency_s"]) is float


def test_is_a_property_returning_a_snapshot() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a"]))
    before = rag.stats
    rag.query("q")
    assert before["total_streams"] == 0  # the old snapshot did not change
    assert rag.stats["total_streams"] == 1
    assert set(rag.stats) == KEYS


async def test_exact_counts_across_outcomes() -> None:
    class Flaky:
        def __init__(self) -> None:
            self.fail = False

        async def retrieve(self, q: str) -> list[str]:
            if self.fail:
                raise RuntimeError("down")
            return ["d"]

    backend = Flaky()
    llm = AsyncLLM(["a", "b", None, "c"])
    rag = StreamingRAG(backend, llm=llm)
    await acollect(rag.astream_events("q"))  # 3 chunks (None skipped)
    await acollect(rag.astream("q"))  # 3 chunks
    backend.fail = True
    await acollect(rag.astream_events("q"))  # error, 0 chunks
    backend.fail = False
    async with aclosing(rag.astream_events("q")) as events:  # abandoned after 1 chunk
        async for event in events:
            if event.is_chunk:
                break
    stats = rag.stats
    assert stats["total_streams"] == 4
    assert stats["total_chunks"] == 7
    assert stats["total_errors"] == 1


async def test_generation_errors_and_timeouts_counted() -> None:
    rag = StreamingRAG(
        RetrieveOnly(),
        llm=AsyncLLM(["a", "b"], stall_after=1),
        config=StreamConfig(generation_timeout=0.05),
    )
    await acollect(rag.astream_events("q"))
    await acollect(rag.astream_events("q"))
    assert rag.stats["total_errors"] == 2
    assert rag.stats["total_chunks"] == 2
    assert rag.stats["avg_stream_latency_s"] == 0.0  # no stream completed


async def test_average_over_completed_streams_only_rounded_to_3(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(pipeline, "time", clock)
    plan: list[tuple[float, bool]] = []

    class Backend:
        async def retrieve(self, q: str) -> list[str]:
            seconds, ok = plan.pop(0)
            clock.advance(seconds)
            if not ok:
                raise RuntimeError("fail")
            return ["d"]

    class LLM:
        async def astream(self, prompt: str):
            clock.advance(0.0002)
            yield "t"

    rag = StreamingRAG(Backend(), llm=LLM())
    plan[:] = [(1.2342, True), (50.0, False), (2.0, True)]
    for _ in range(3):
        await acollect(rag.astream_events("q"))
    stats = rag.stats
    # completed: 1.2344 and 2.0002 -> mean 1.6173 -> 1.617; the failed 50 s one is excluded
    assert stats["avg_stream_latency_s"] == 1.617
    assert stats["total_streams"] == 3
    assert stats["total_errors"] == 1


async def test_abandoned_stream_not_in_average(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(pipeline, "time", clock)

    class LLM:
        async def astream(self, prompt: str):
            clock.advance(1.0)
            yield "a"
            clock.advance(100.0)
            yield "b"

    rag = StreamingRAG(RetrieveOnly(), llm=LLM())
    await acollect(rag.astream_events("q"))  # completes in 101 s
    async with aclosing(rag.astream_events("q")) as events:
        async for event in events:
            if event.is_chunk:
                break
    assert rag.stats["avg_stream_latency_s"] == 101.0
    assert rag.stats["total_streams"] == 2


async def test_average_matches_total_latency_payloads() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a"]))
    totals = []
    for _ in range(3):
        events = await acollect(rag.astream_events("q"))
        totals.append(events[-1].data["total_latency"])
    assert rag.stats["avg_stream_latency_s"] == round(sum(totals) / 3, 3)


@pytest.mark.parametrize("llm_kind", ["async", "sync"])
async def test_many_concurrent_tasks_exact_totals(llm_kind: str) -> None:
    n_streams, n_tokens = 40, 25
    tokens = [f"{i} " for i in range(n_tokens)]

    class Yielding:
        async def astream(self, prompt: str):
            for t in tokens:
                await asyncio.sleep(0)  # interleave the streams
                yield t

    llm = Yielding() if llm_kind == "async" else SyncLLM(tokens)
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    results = await asyncio.gather(*(acollect(rag.astream_events("q")) for _ in range(n_streams)))
    assert all(len(r) == n_tokens + 4 for r in results)
    stats = rag.stats
    assert stats["total_streams"] == n_streams
    assert stats["total_chunks"] == n_streams * n_tokens
    assert stats["total_errors"] == 0


def test_many_concurrent_threads_exact_totals() -> None:
    n_threads, per_thread, n_tokens = 8, 5, 30

    class Failing:
        async def retrieve(self, q: str) -> list[str]:
            if q == "fail":
                raise RuntimeError("x")
            return ["d"]

    rag = StreamingRAG(Failing(), llm=AsyncLLM([f"{i}" for i in range(n_tokens)]))
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(idx: int) -> None:
        try:
            start.wait()
            for j in range(per_thread):
                if (idx + j) % 5 == 0:
                    rag.query("fail")
                elif j % 2:
                    list(rag.stream("q"))
                else:
                    rag.query("q")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    total = n_threads * per_thread
    failed = sum(1 for i in range(n_threads) for j in range(per_thread) if (i + j) % 5 == 0)
    stats = rag.stats
    assert stats["total_streams"] == total
    assert stats["total_errors"] == failed
    assert stats["total_chunks"] == (total - failed) * n_tokens


def test_threads_and_tasks_at_once_on_one_instance() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a", "b", "c"]))

    async def many() -> None:
        await asyncio.gather(*(acollect(rag.astream_events("q")) for _ in range(20)))

    threads = [threading.Thread(target=asyncio.run, args=(many(),)) for _ in range(4)]
    threads += [threading.Thread(target=rag.query, args=("q",)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert rag.stats["total_streams"] == 86
    assert rag.stats["total_chunks"] == 258
