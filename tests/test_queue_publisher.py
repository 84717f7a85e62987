"""The coalescing publisher: many jobs' events share round trips, and still each job's events
arrive once, in order, with the terminal event (and the retention TTL) last."""

from __future__ import annotations

import asyncio

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
