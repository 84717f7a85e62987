"""Watchers (issue 13 item 3): every subscriber counts as a watcher of its job while it follows
(sync, async with its own reads, each fan-out subscriber, each open SSE stream of the bridge);
`status(details=True)` and ``GET /answers/{id}`` report the count; the worker's opt-in
`abandon_after_s` cancels a job nobody has watched for that long. Real servers throughout (the
events on the test cluster in cluster mode)."""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import aclosing
from typing import Any

import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag.wire import JobKeys
from streaming_rag.wire.presence import WATCH, WATCHERS, watch_call, watchers_call
from streaming_rag_cli import build_parser
from streaming_rag_client import JobStatus, StreamingRAGClient
from streaming_rag_client._presence import presence_window
from streaming_rag_worker import WorkerConfig, WorkerConfigError
from streaming_rag_worker.abandon import ABANDONED_MSG
from tests.helpers_queue import running_worker, until
from tests.helpers_web import Message, sse, web_stack
from tests.queue_apps import GatedLLM, make_rag

WAIT_S = 30.0  # liveness guard only
ABANDONED = {"stage": "generation", "msg": "Abandoned: nobody watching"}
#: A worker that abandons unwatched jobs after half a second, looking every 0.1 s.
POLICY = {"abandon_after_s": 0.5, "heartbeat_s": 0.1, "lease_s": 1.0}


def stalled() -> tuple[GatedLLM, Any]:
    """A pipeline that emits two chunks and waits for `llm.release`."""
    llm = GatedLLM()
    return llm, make_rag(llm, generation_timeout=600)


async def watchers(client: StreamingRAGClient, job_id: str) -> int:
    return (await client.astatus(job_id, details=True)).watchers


async def count_is(client: StreamingRAGClient, job_id: str, n: int) -> None:
    async def reached() -> bool:
        return await watchers(client, job_id) == n

    await until(reached, f"{n} watchers of job {job_id}", WAIT_S)


async def first_chunk_of(events: Any) -> StreamEvent:
    """Iterate `events` up to its first chunk (the job is running and the subscriber follows)."""
    async for event in events:
        if event.type is EventType.CHUNK:
            return event
    raise AssertionError("the stream ended before its first chunk")


# -- the scripts -----------------------------------------------------------------------------------
def test_watch_and_watchers_scripts_count_live_watchers_only(events_client: Any, key_prefix: str):
    keys = JobKeys(key_prefix, "presence-script")
    watch, count = events_client.register_script(WATCH), events_client.register_script(WATCHERS)

    def counted() -> int:
        c = watchers_call(keys)
        return int(count(keys=c.keys, args=c.args))

    def write(pairs: list[tuple[str, int]], ttl_ms: int) -> None:
        c = watch_call(keys, pairs, ttl_ms=ttl_ms)
        assert c.keys == [keys.watchers] and keys.watchers.startswith(keys.base)
        watch(keys=c.keys, args=c.args)

    assert counted() == 0
    write([("fanout-a", 3), ("sync-b", 1)], 60_000)
    assert counted() == 4
    assert 0 < events_client.pttl(keys.watchers) <= 60_000  # the key expires on its own
    write([("fanout-a", 0)], 60_000)  # stopped: deleted at once
    assert counted() == 1
    write([("sync-b", 1)], 1)  # its expiry passes within a millisecond
    deadline = time.monotonic() + WAIT_S
    while counted() != 0:
        assert time.monotonic() < deadline, "an expired watcher kept counting"
    assert events_client.hlen(keys.watchers) == 0  # expired fields are cleaned on the way


def test_presence_window_refreshes_well_within_its_ttl() -> None:
    refresh_s, ttl_ms = presence_window(0.1)
    assert refresh_s == 0.5 and ttl_ms == 1500
    refresh_s, ttl_ms = presence_window(2.0)
    assert refresh_s == 2.0 and ttl_ms == 6000


# -- counting subscribers --------------------------------------------------------------------------
async def test_count_follows_sync_async_and_fanout_subscribers(redis_url: str, key_prefix: str):
    llm, rag = stalled()
    async with (
        running_worker(redis_url, key_prefix, rag),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
        StreamingRAGClient(
            redis_url, prefix=key_prefix, poll_interval_s=0.1, fanout=False
        ) as alone,
    ):
        job_id = await client.asubmit("q")
        assert await watchers(client, job_id) == 0  # submitted, nobody follows yet
        assert await client.astatus(job_id) in (JobStatus.QUEUED, JobStatus.RUNNING)

        # one sync subscriber, following to the end in a thread
        sync_events: list[StreamEvent] = []
        started = threading.Event()

        def follow_sync() -> None:
            for event in client.events(job_id):
                sync_events.append(event)
                started.set()

        sync_task = asyncio.create_task(asyncio.to_thread(follow_sync))
        await count_is(client, job_id, 1)
        assert await asyncio.to_thread(started.wait, WAIT_S)
        sync_details = await asyncio.to_thread(client.status, job_id, details=True)
        assert sync_details.status is JobStatus.RUNNING and sync_details.watchers == 1

        # three fan-out subscribers of one client: one field, counted three times
        fanned = [client.aevents(job_id) for _ in range(3)]
        for events in fanned:
            await first_chunk_of(events)
        await count_is(client, job_id, 4)
        # and one async subscriber with its own reads
        own = alone.aevents(job_id)
        await first_chunk_of(own)
        await count_is(client, job_id, 5)

        await own.aclose()
        assert await watchers(client, job_id) == 4  # its stop deleted it before returning
        await fanned[0].aclose()
        await fanned[1].aclose()
        await count_is(client, job_id, 2)
        await fanned[2].aclose()  # the fan-out's last subscriber: deleted before it returns
        assert await watchers(client, job_id) == 1

        assert llm.release is not None
        llm.release.set()
        await asyncio.wait_for(sync_task, WAIT_S)
        assert sync_events[-1].type is EventType.GENERATION_DONE
        details = await client.astatus(job_id, details=True)
    assert details.status is JobStatus.DONE and details.watchers == 0


async def test_the_bridge_reports_watchers_while_sse_streams_are_open(
    redis_url: str, key_prefix: str
):
    llm, rag = stalled()
    async with web_stack(redis_url, key_prefix, pipeline=rag) as stack:
        response = await stack.http.post("/answers", json={"query": "q"})
        job_id = response.json()["job_id"]
        events_url = stack.url(response.json()["events_url"])

        async def reported() -> int:
            body = (await stack.http.get(f"/answers/{job_id}")).json()
            return int(body["watchers"])

        async def reaches(n: int) -> None:
            async def ok() -> bool:
                return await reported() == n

            await until(ok, f"the bridge reporting {n} watchers", WAIT_S)

        assert await reported() == 0
        async with stack.http.stream("GET", events_url) as first:
            items = sse(first)
            async for item in items:
                if isinstance(item, Message) and item.event == "chunk":
                    break
            await reaches(1)
            async with stack.http.stream("GET", events_url) as second:
                assert second.status_code == 200
                await reaches(2)
            await reaches(1)  # the second browser tab went away
        await reaches(0)
        assert llm.release is not None
        llm.release.set()
        status = (await stack.http.get(f"/answers/{job_id}")).json()
        assert status["status"] == "running" or status["status"] == "done"


# -- abandon_after_s -------------------------------------------------------------------------------
async def test_an_unwatched_job_is_abandoned(redis_url: str, key_prefix: str):
    llm, rag = stalled()
    async with (
        running_worker(redis_url, key_prefix, rag, **POLICY),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
    ):
        t0 = time.monotonic()
        job_id = await client.asubmit("fire and forget")

        async def ended() -> bool:  # status() does not count as watching
            return await client.astatus(job_id) is JobStatus.CANCELLED

        await until(ended, "the unwatched job to be abandoned", WAIT_S)
        elapsed = time.monotonic() - t0
        events = [e async for e in client.aevents(job_id)]
        details = await client.astatus(job_id, details=True)
    assert elapsed >= POLICY["abandon_after_s"]
    assert (events[-1].type, events[-1].data) == (EventType.ERROR, ABANDONED)
    assert ABANDONED["msg"] == ABANDONED_MSG
    assert sum(e.type is EventType.ERROR for e in events) == 1
    assert llm.closed.is_set()  # the generation was really stopped
    assert details.status is JobStatus.CANCELLED and details.finish_reason == "cancelled"


async def test_a_watched_job_with_the_policy_completes(redis_url: str, key_prefix: str):
    llm, rag = stalled()
    async with (
        running_worker(redis_url, key_prefix, rag, **POLICY),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
    ):
        job_id = await client.asubmit("q")
        async with aclosing(client.aevents(job_id)) as events:
            seen = [await first_chunk_of(events)]
            # three abandon windows (15 heartbeats) pass while the job stalls, watched: a
            # duration the test must span, not a synchronisation
            await asyncio.sleep(3 * POLICY["abandon_after_s"])
            assert await client.astatus(job_id) is JobStatus.RUNNING
            assert llm.release is not None
            llm.release.set()
            seen += [e async for e in events]
    assert seen[-1].type is EventType.GENERATION_DONE
    assert "".join(e.data for e in seen if e.type is EventType.CHUNK) == "t0 t1 end"


@pytest.mark.parametrize("fanout", [True, False])
async def test_a_job_whose_only_watcher_leaves_is_abandoned_after_the_window(
    redis_url: str, key_prefix: str, fanout: bool
):
    llm, rag = stalled()
    async with (
        running_worker(redis_url, key_prefix, rag, **POLICY),
        StreamingRAGClient(
            redis_url, prefix=key_prefix, poll_interval_s=0.1, fanout=fanout
        ) as client,
    ):
        job_id = await client.asubmit("q")
        async with aclosing(client.aevents(job_id)) as events:
            await first_chunk_of(events)
            assert llm.started.is_set()
        left = time.monotonic()
        assert await client.astatus(job_id) is JobStatus.RUNNING  # not at once

        async def ended() -> bool:
            return await client.astatus(job_id) is JobStatus.CANCELLED

        await until(ended, "the job to be abandoned", WAIT_S)
        elapsed = time.monotonic() - left
        events_after = [e async for e in client.aevents(job_id)]
    # the window counts from the last heartbeat that saw the watcher (at most 0.1 s earlier)
    assert elapsed >= POLICY["abandon_after_s"] - POLICY["heartbeat_s"] - 0.05
    assert (events_after[-1].type, events_after[-1].data) == (EventType.ERROR, ABANDONED)


async def test_explicit_cancel_is_unchanged_under_the_policy(redis_url: str, key_prefix: str):
    llm, rag = stalled()
    assert not llm.closed.is_set()
    async with (
        running_worker(redis_url, key_prefix, rag, **POLICY),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
    ):
        job_id = await client.asubmit("q")
        async with aclosing(client.aevents(job_id)) as events:
            await first_chunk_of(events)
            assert await client.acancel(job_id)
            rest = [e async for e in events]
    assert (rest[-1].type, rest[-1].data) == (
        EventType.ERROR,
        {"stage": "generation", "msg": "Cancelled"},
    )
    assert llm.closed.is_set()


# -- the setting -----------------------------------------------------------------------------------
def test_abandon_after_s_setting_env_and_flag() -> None:
    assert WorkerConfig().abandon_after_s is None  # opt-in
    assert WorkerConfig(abandon_after_s=2.5).abandon_after_s == 2.5
    env = {"STREAMING_RAG_ABANDON_AFTER_S": "30"}
    assert WorkerConfig.from_env(env).abandon_after_s == 30.0
    for bad in (0, -1.0):
        with pytest.raises(WorkerConfigError, match="abandon_after_s"):
            WorkerConfig(abandon_after_s=bad)
    with pytest.raises(WorkerConfigError, match="STREAMING_RAG_ABANDON_AFTER_S"):
        WorkerConfig.from_env({"STREAMING_RAG_ABANDON_AFTER_S": "soon"})
    args = build_parser().parse_args(["worker", "--abandon-after-s", "45"])
    assert args.abandon_after_s == 45.0
    assert build_parser().parse_args(["worker"]).abandon_after_s is None
