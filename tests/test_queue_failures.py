"""Nobody hangs: cancellation, no worker, a worker killed mid-answer, shutdown, the event cap."""

from __future__ import annotations

import asyncio
import signal
import time

import msgpack
import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag.wire import JobKeys
from streaming_rag_client import JobStatus, StreamingRAGClient
from tests.helpers_queue import running_worker, spawn_worker
from tests.queue_apps import GatedLLM, WordsLLM, make_rag

WAIT_S = 30.0  # liveness guard only: the awaited conditions come far sooner


def error_of(events: list[StreamEvent]) -> dict:
    assert events, "no events"
    assert events[-1].type is EventType.ERROR, events[-1]
    assert sum(e.is_terminal for e in events) == 1
    return events[-1].data


@pytest.fixture
def client(redis_url, key_prefix):
    rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1)
    yield rag
    rag.close()


async def test_cancel_a_running_job_stops_generation_and_closes_the_llm(
    redis_url, key_prefix, client
):
    llm = GatedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm)):
        job_id = await client.asubmit("cancel me")
        seen: list[StreamEvent] = []

        async def follow() -> None:
            async for event in client.aevents(job_id):
                seen.append(event)

        follower = asyncio.create_task(follow())
        assert await asyncio.to_thread(llm.started.wait, WAIT_S)
        assert await client.astatus(job_id) is JobStatus.RUNNING
        assert await client.acancel(job_id) is True
        await asyncio.wait_for(follower, WAIT_S)
        assert error_of(seen) == {"stage": "generation", "msg": "Cancelled"}
        assert llm.closed.is_set()
        assert [e.data for e in seen if e.is_chunk] == ["t0 ", "t1 "]
        assert await client.astatus(job_id) is JobStatus.CANCELLED
        assert await client.acancel(job_id) is False  # already finished


def test_cancel_a_queued_job_ends_it_at_once_and_withdraws_it(
    client, redis_client, events_client, key_prefix
):
    job_id = client.submit("nobody will run me")
    assert client.status(job_id) is JobStatus.QUEUED
    assert client.cancel(job_id) is True
    events = list(client.events(job_id))
    assert [e.type for e in events] == [EventType.ERROR]
    assert events[0].data == {"stage": "generation", "msg": "Cancelled"}
    assert events[0].latency == 0.0
    assert redis_client.zcard(f"{key_prefix}:queue") == 0
    assert client.status(job_id) is JobStatus.CANCELLED
    # CANCEL's Lua wrote it in wire format v2 (cmsgpack: a table with keys 1..4 is an array)
    [(_, fields)] = events_client.xrange(JobKeys(key_prefix, job_id).events)
    assert msgpack.unpackb(fields[b"e"]) == [2, "error", events[0].data, 0]


def test_an_old_workers_v1_stream_ended_by_check_decodes_whole(client, events_client, key_prefix):
    """A job an older worker (wire format v1) was answering when it died: CHECK appends its
    v2 "Worker lost" after the v1 entries, and a subscriber reads the mixed stream."""
    keys = JobKeys(key_prefix, "old-worker-job")
    v1 = [
        {"v": 1, "t": "retrieval_start", "d": {"query": "q"}, "l": 0.0},
        {"v": 1, "t": "chunk", "d": "half ", "l": 0.25},
    ]
    for entry in v1:
        events_client.xadd(keys.events, {"e": msgpack.packb(entry)})
    started = int(time.time() * 1000) - 1500
    events_client.hset(keys.meta, mapping={"status": "running", "started_ms": started})
    # no lease key: the worker is gone, so the first CHECK ends the job
    events = list(client.events(keys.job_id))
    assert [(e.type, e.data) for e in events[:2]] == [
        (EventType.RETRIEVAL_START, {"query": "q"}),
        (EventType.CHUNK, "half "),
    ]
    assert error_of(events) == {"stage": "worker", "msg": "Worker lost"}
    assert events[2].latency >= 1.5  # seconds since the job started, packed by Lua
    raw = events_client.xrange(keys.events)
    assert [type(msgpack.unpackb(f[b"e"])) for _, f in raw] == [dict, dict, list]
    assert list(client.events(keys.job_id)) == events  # a replay decodes the same


def test_a_job_no_worker_picks_up_ends_with_the_queue_error(redis_url, key_prefix, redis_client):
    with StreamingRAGClient(
        redis_url, prefix=key_prefix, start_timeout=0.3, poll_interval_s=0.1
    ) as rag:
        events = list(rag.stream_events("is anyone there?"))
        data = error_of(events)
        assert data["stage"] == "queue"
        assert data["msg"].startswith("No worker picked up the job within 0.3 s")
        assert "streaming-rag worker" in data["msg"]
        assert redis_client.zcard(f"{key_prefix}:queue") == 0  # withdrawn
        assert rag.stats["total_errors"] == 1


async def test_a_worker_killed_mid_answer_ends_every_subscriber_with_worker_lost(
    redis_url, key_prefix, client, events_client
):
    proc = spawn_worker(
        redis_url, key_prefix, "tests.queue_apps:stalled_app", lease_s=1.0, heartbeat_s=0.3
    )
    try:
        job_id = await client.asubmit("die halfway")
        first_chunk = asyncio.Event()

        async def follow() -> list[StreamEvent]:
            out = []
            async for event in client.aevents(job_id):
                out.append(event)
                if event.is_chunk:
                    first_chunk.set()
            return out

        subscribers = [asyncio.create_task(follow()) for _ in range(3)]
        await asyncio.wait_for(first_chunk.wait(), WAIT_S)
        proc.send_signal(signal.SIGKILL)
        results = await asyncio.wait_for(asyncio.gather(*subscribers), WAIT_S)
    finally:
        proc.kill()
        proc.wait()
    for events in results:
        assert error_of(events) == {"stage": "worker", "msg": "Worker lost"}
        assert events == results[0]
    # appended once, atomically: a later replay ends the same way
    replay = [e async for e in client.aevents(job_id)]
    assert replay == results[0]
    assert await client.astatus(job_id) is JobStatus.FAILED
    assert events_client.pttl(JobKeys(key_prefix, job_id).events) > 0


async def test_sigterm_gives_running_jobs_the_grace_period_then_ends_them(
    redis_url, key_prefix, client
):
    proc = spawn_worker(redis_url, key_prefix, "tests.queue_apps:stalled_app", shutdown_grace_s=0.2)
    try:
        job_id = await client.asubmit("interrupted")
        async for event in client.aevents(job_id):
            if event.is_chunk:
                break
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, WAIT_S)
    finally:
        proc.kill()
    assert code == 0
    events = [e async for e in client.aevents(job_id)]
    assert error_of(events) == {"stage": "worker", "msg": "Worker shut down"}
    assert await client.astatus(job_id) is JobStatus.FAILED


async def test_stopping_an_in_process_worker_ends_running_jobs(redis_url, key_prefix, client):
    llm = GatedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm)) as worker:
        job_id = await client.asubmit("stop while running")
        assert await asyncio.to_thread(llm.started.wait, WAIT_S)
        await worker.stop(0)
    events = [e async for e in client.aevents(job_id)]
    assert error_of(events) == {"stage": "worker", "msg": "Worker shut down"}
    assert llm.closed.is_set()


async def test_the_event_cap_ends_a_runaway_job_with_an_error(
    redis_url, key_prefix, client, redis_client
):
    rag = make_rag(WordsLLM([f"x{i}" for i in range(50)]))
    async with running_worker(redis_url, key_prefix, rag, max_events=10):
        events = [e async for e in client.astream_events("runaway")]
    assert len(events) == 10
    assert error_of(events) == {
        "stage": "generation",
        "msg": "Event limit reached: the job produced more than 10 events",
    }


async def test_a_generation_timeout_in_the_worker_reaches_the_subscriber(
    redis_url, key_prefix, client
):
    llm = GatedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm, generation_timeout=0.2)):
        job_id = await client.asubmit("too slow")
        events = [e async for e in client.aevents(job_id)]
    assert error_of(events) == {"msg": "Generation timed out", "stage": "generation"}
    assert await client.astatus(job_id) is JobStatus.FAILED
    assert llm.closed.is_set()
