"""Fan-out in one async client: one reader connection, every subscriber exactly once, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio.cluster

from streaming_rag import StreamEvent
from streaming_rag_client import StreamingRAGClient
from tests.helpers_queue import running_worker
from tests.queue_apps import GatedLLM, WordsLLM, make_rag

WAIT_S = 30.0


def ids(events: list[StreamEvent]) -> list[str | None]:
    return [e.id for e in events]


def in_use(events: Any) -> int:
    """Connections the client's events side holds now (its pool, or its cluster's node pools;
    a fan-out reader's own connection counts on a single server, not on a cluster)."""
    if isinstance(events, redis.asyncio.cluster.RedisCluster):
        return sum(len(n._connections) - len(n._free) for n in events.get_nodes())
    return len(events.connection_pool._in_use_connections)


async def collect(rag: StreamingRAGClient, job_id: str, after: str | None = None) -> list:
    return [e async for e in rag.aevents(job_id, after=after)]


@pytest.mark.parametrize(("fanout", "max_connections"), [(True, 2), (False, 100)])
async def test_many_subscribers_share_one_reader_connection(
    redis_url, key_prefix, fanout, max_connections
):
    llm = GatedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm)):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=5, fanout=fanout)
        try:
            job_id = await rag.asubmit("popular answer")
            waiting = asyncio.Semaphore(0)

            async def subscriber() -> list[StreamEvent]:
                out = []
                async for event in rag.aevents(job_id):
                    out.append(event)
                    if event.data == "t1 ":
                        waiting.release()  # from here on it waits for live events
                return out

            subscribers = [asyncio.create_task(subscriber()) for _ in range(100)]
            for _ in subscribers:
                await asyncio.wait_for(waiting.acquire(), WAIT_S)
            events = rag._async_transport().events
            if not fanout:  # the contrast: without fan-out, each waiting reader holds one
                async with asyncio.timeout(WAIT_S):
                    while in_use(events) <= 50:  # noqa: ASYNC110 - no event to await
                        await asyncio.sleep(0.01)
            readers = rag._fanout.readers if rag._fanout is not None else 0
            own = readers if isinstance(events, redis.asyncio.cluster.RedisCluster) else 0
            assert in_use(events) + own <= max_connections
            assert llm.release is not None
            llm.release.set()
            results = await asyncio.wait_for(asyncio.gather(*subscribers), WAIT_S)
        finally:
            await rag.aclose()
    assert all(r == results[0] for r in results)
    assert [e.data for e in results[0] if e.is_chunk] == ["t0 ", "t1 ", "end"]
    assert results[0][-1].is_terminal


async def test_subscribers_joining_at_every_point_of_a_live_stream_see_the_same_trace(
    redis_url, key_prefix
):
    words = [f"w{i}" for i in range(300)]
    async with running_worker(redis_url, key_prefix, make_rag(WordsLLM(words))):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.2)
        try:
            job_id = await rag.asubmit("staggered")
            joined: list[asyncio.Task[list[StreamEvent]]] = []
            async for event in rag.aevents(job_id):
                if event.is_chunk and len(joined) < 30 and int(event.data[1:]) % 10 == 0:
                    joined.append(asyncio.create_task(collect(rag, job_id)))
            results = await asyncio.wait_for(asyncio.gather(*joined), WAIT_S)
            trace = await collect(rag, job_id)
        finally:
            await rag.aclose()
    assert len(joined) == 30
    assert len(trace) == 3 + 300 + 1
    for events in results:
        assert ids(events) == ids(trace)


async def test_a_slow_subscriber_overflows_then_catches_up_without_losing_anything(
    redis_url, key_prefix
):
    words = [f"w{i}" for i in range(40)]
    async with running_worker(redis_url, key_prefix, make_rag(WordsLLM(words))):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.2, fanout_buffer=3)
        try:
            job_id = await rag.asubmit("slow reader")
            slow = rag.aevents(job_id)
            first = await anext(slow)  # joined; now stop reading while the job runs
            fast = await collect(rag, job_id)  # a prompt subscriber runs to the end
            rest = [e async for e in slow]
        finally:
            await rag.aclose()
    assert ids([first, *rest]) == ids(fast)
    assert len(fast) == 3 + 40 + 1


async def test_resume_through_the_fanout_after_any_entry(redis_url, key_prefix):
    async with running_worker(redis_url, key_prefix, make_rag()):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.2)
        try:
            job_id = await rag.asubmit("resume")
            live = await collect(rag, job_id)
            for k in (0, 4, len(live) - 2, len(live) - 1):
                assert await collect(rag, job_id, after=live[k].id) == live[k + 1 :]
        finally:
            await rag.aclose()


@pytest.mark.parametrize("fanout", [True, False])
async def test_both_follow_modes_give_the_same_trace(redis_url, key_prefix, fanout):
    async with running_worker(redis_url, key_prefix, make_rag()):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, fanout=fanout)
        try:
            job_id = await rag.asubmit("mode")
            events = await collect(rag, job_id)
            again = await collect(rag, job_id)
            submitted = [e async for e in rag.astream_events("mode")]
        finally:
            await rag.aclose()
    assert events == again
    assert [e.type for e in submitted] == [e.type for e in events]
    assert [e.data for e in submitted if e.is_chunk] == [e.data for e in events if e.is_chunk]


async def test_cancelling_aclose_raises_instead_of_being_swallowed(redis_url, key_prefix):
    """Ctrl-C under `asyncio.run` cancels the main task: a task cancelled while it waits in
    `aclose()` for the fan-out readers must see its CancelledError."""
    rag = StreamingRAGClient(redis_url, prefix=key_prefix, start_timeout=WAIT_S)
    job_id = await rag.asubmit("nobody answers")  # no worker: the reader blocks
    follower = asyncio.create_task(collect(rag, job_id))
    async with asyncio.timeout(WAIT_S):
        while rag._fanout is None or rag._fanout.readers == 0:  # noqa: ASYNC110 - no event
            await asyncio.sleep(0.01)
    follower.cancel()
    closer = asyncio.create_task(rag.aclose())
    await asyncio.sleep(0)  # the closer runs up to its wait for the reader
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    with pytest.raises(asyncio.CancelledError):
        await follower
    await rag.aclose()


async def test_a_job_just_submitted_is_followed_without_a_catch_up_read(redis_url, key_prefix):
    """`astream_events` joins the shared reader at once: its blocking XREAD from the stream's
    start is the round trip after SUBMIT (no non-blocking catch-up read first)."""
    async with running_worker(redis_url, key_prefix, make_rag(WordsLLM(["a", "b"]))):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            transport = rag._async_transport()
            reads: list[str] = []
            own_read = transport.read

            async def counted(keys: Any, cursor: str, block_ms: int | None) -> Any:
                reads.append(cursor)
                return await own_read(keys, cursor, block_ms)

            transport.read = counted  # type: ignore[method-assign]
            fresh = [e async for e in rag.astream_events("fresh")]
            assert reads == []
            (submitted,) = await _job_ids(redis_url, key_prefix)
            later = [e async for e in rag.aevents(submitted)]
            assert reads == ["0-0"]  # an existing job is caught up on first, as before
        finally:
            await rag.aclose()
    assert [e.data for e in fresh if e.is_chunk] == ["a ", "b "]
    assert later == fresh


async def _job_ids(redis_url: str, prefix: str) -> list[str]:
    """The ids of the jobs submitted under `prefix` (from the workers' sweep index)."""
    import redis.asyncio as aredis

    r = aredis.Redis.from_url(redis_url)
    try:
        return [m.decode() for m in await r.zrange(f"{prefix}:jobs", 0, -1)]
    finally:
        await r.aclose()
