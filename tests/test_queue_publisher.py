"""The coalescing publisher: many jobs' events share round trips, and still each job's events
arrive once, in order, with the terminal event (and the retention TTL) last."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streaming_rag import EventType
from streaming_rag.wire import JobKeys
from streaming_rag_client import StreamingRAGClient
from tests.helpers_queue import running_worker
from tests.queue_apps import WordsLLM, make_rag

WORDS = [f"w{i}" for i in range(200)]


async def test_concurrent_jobs_are_coalesced_yet_each_stream_is_exact(
    redis_url, key_prefix, aevents_client
):
    async with running_worker(redis_url, key_prefix, make_rag(WordsLLM(WORDS))) as worker:
        rag = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            ids = await asyncio.gather(*(rag.asubmit(f"job {i}") for i in range(30)))

            async def trace(job_id: str) -> list:
                return [e async for e in rag.aevents(job_id)]

            traces = await asyncio.gather(*(trace(j) for j in ids))
        finally:
            await rag.aclose()
        publisher = worker.runtime.state.publisher
    for job_id, events in zip(ids, traces, strict=True):
        assert [e.data for e in events if e.is_chunk] == [w + " " for w in WORDS]
        assert events[-1].type is EventType.GENERATION_DONE
        assert sum(e.is_terminal for e in events) == 1
        assert len({e.id for e in events}) == len(events)  # exactly once
        keys = JobKeys(key_prefix, job_id)
        assert await aevents_client.xlen(keys.events) == len(events)
        assert await aevents_client.pttl(keys.events) > 0  # retention set with the terminal
    total = 30 * (len(WORDS) + 4)
    assert publisher.events_sent == total
    assert publisher.round_trips < total / 4  # many events per round trip


class _PacedLLM:
    """Yields 20 tokens 5 ms apart (an LLM that paces its output)."""

    async def astream(self, prompt: str) -> Any:
        for i in range(20):
            await asyncio.sleep(0.005)
            yield f"p{i} "


@pytest.mark.parametrize("flush_ms", [0.0, 200.0])
async def test_a_coalescing_window_sends_paced_tokens_together(redis_url, key_prefix, flush_ms):
    async with running_worker(
        redis_url, key_prefix, make_rag(_PacedLLM()), flush_ms=flush_ms
    ) as worker:
        rag = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            events = [e async for e in rag.astream_events("paced")]
        finally:
            await rag.aclose()
        publisher = worker.runtime.state.publisher
    assert [e.data for e in events if e.is_chunk] == [f"p{i} " for i in range(20)]
    assert len({e.id for e in events}) == len(events) == 24
    if flush_ms:  # the 100 ms answer fits in one or two 200 ms windows
        assert publisher.round_trips <= 3
    else:  # each token 5 ms apart goes on its own (a few may share a round trip)
        assert publisher.round_trips >= 10


def test_flush_ms_is_checked() -> None:
    from streaming_rag.exceptions import WorkerConfigError
    from streaming_rag_worker import WorkerConfig

    assert WorkerConfig(flush_ms=2).flush_ms == 2
    with pytest.raises(WorkerConfigError, match="flush_ms"):
        WorkerConfig(flush_ms=-1)
    assert WorkerConfig.from_env({"STREAMING_RAG_FLUSH_MS": "1.5"}).flush_ms == 1.5
