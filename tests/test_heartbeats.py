"""The worker's heartbeats: one round trip per beat renews the lease of every job the process
runs (no task, timer or round trip per job), on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from streaming_rag import EventType
from streaming_rag.wire import JobKeys
from streaming_rag_client import StreamingRAGClient
from streaming_rag_worker.heartbeats import Heartbeats
from tests.helpers_queue import running_worker
from tests.queue_apps import make_rag

WAIT_S = 30.0
JOBS = 5


class HeldLLM:
    """Every stream yields one token, then waits for the shared `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        yield "a "
        self.started += 1
        await self.release.wait()
        yield "b"


async def _until(predicate: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 (state of the worker in this loop)
            await asyncio.sleep(0.01)


async def test_one_round_trip_per_beat_keeps_every_lease_alive(
    redis_url, key_prefix, aevents_client, monkeypatch
):
    sizes: list[int] = []
    real_beat = Heartbeats._beat

    async def counting_beat(self: Heartbeats, jobs: list[JobKeys]) -> list[Any]:
        sizes.append(len(jobs))
        return await real_beat(self, jobs)

    monkeypatch.setattr(Heartbeats, "_beat", counting_beat)
    llm = HeldLLM()
    cfg = {"heartbeat_s": 0.2, "lease_s": 0.6}
    async with running_worker(redis_url, key_prefix, make_rag(llm), **cfg):
        client = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            ids = [await client.asubmit(f"held {i}") for i in range(JOBS)]
            await _until(lambda: llm.started == JOBS)
            sizes.clear()
            await _until(lambda: len(sizes) >= 5)  # 5 beats: 1 s, longer than the 0.6 s lease
            for job_id in ids:
                keys = JobKeys(key_prefix, job_id)
                assert await aevents_client.exists(keys.lease) == 1  # renewed, never expired
                assert await aevents_client.hget(keys.meta, "status") == b"running"
            assert set(sizes) == {JOBS}  # every beat carried every running job
            llm.release.set()
            for job_id in ids:
                events = [e async for e in client.aevents(job_id)]
                assert events[-1].type is EventType.GENERATION_DONE
        finally:
            llm.release.set()
            await client.aclose()


async def test_a_cancel_flag_found_by_a_beat_stops_the_job(redis_url, key_prefix, aevents_client):
    llm = HeldLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm), heartbeat_s=0.2, lease_s=0.6):
        client = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            job_id = await client.asubmit("to be cancelled by its heartbeat")
            await _until(lambda: llm.started == 1)
            # the flag alone, without the pub/sub message: only a heartbeat can see it
            await aevents_client.hset(JobKeys(key_prefix, job_id).meta, "cancel", "1")
            events = [e async for e in client.aevents(job_id)]
            assert events[-1].type is EventType.ERROR
            assert events[-1].data["msg"] == "Cancelled"
        finally:
            llm.release.set()
            await client.aclose()


async def test_a_beat_whose_handling_raises_does_not_stop_the_next(
    aevents_client, key_prefix, redis_url
):
    from streaming_rag_worker import WorkerConfig

    keys = JobKeys(key_prefix, "ended-elsewhere")
    await aevents_client.hset(keys.meta, mapping={"status": "failed"})
    calls: list[str] = []
    both = asyncio.Event()

    def is_running(job_id: str) -> bool:
        calls.append(job_id)
        if len(calls) >= 2:
            both.set()
        raise RuntimeError("a bug in the reply's handling")

    cfg = WorkerConfig(redis_url=redis_url, prefix=key_prefix, heartbeat_s=0.05, lease_s=0.2)
    beats = Heartbeats(
        aevents_client, cfg, on_cancel=lambda job_id, abandoned: None, is_running=is_running
    )
    beats.add(keys)
    try:
        await asyncio.wait_for(both.wait(), WAIT_S)  # the second beat came after the first raised
    finally:
        await beats.aclose()
    assert calls[:2] == [keys.job_id, keys.job_id]
