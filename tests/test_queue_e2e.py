"""The client's surfaces end to end through a real server and an in-process arq worker."""

from __future__ import annotations

import asyncio
import re

import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag.wire import JobKeys
from streaming_rag_client import (
    DuplicateJob,
    EventDecodeError,
    InvalidRequest,
    JobNotFound,
    JobStatus,
    ServerUnavailable,
    StreamingRAGClient,
)
from tests.helpers_queue import running_worker
from tests.queue_apps import ANSWER_WORDS, make_rag

ANSWER = "".join(w + " " for w in ANSWER_WORDS)
LIFECYCLE = ["retrieval_start", "retrieval_done", "generation_start"]


def types(events: list[StreamEvent]) -> list[str]:
    return [e.type.value for e in events]


def expected_types() -> list[str]:
    return [*LIFECYCLE, *["chunk"] * len(ANSWER_WORDS), "generation_done"]


@pytest.fixture
async def served(redis_url, key_prefix):
    """A worker serving the 12-word app, and a client on the same prefix."""
    async with running_worker(redis_url, key_prefix, make_rag()):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.2)
        try:
            yield rag
        finally:
            await rag.aclose()


async def test_astream_events_matches_the_in_process_trace_and_sets_ids(served):
    events = [e async for e in served.astream_events("what is rag?")]
    local = [e async for e in make_rag().astream_events("what is rag?")]
    assert types(events) == types(local) == expected_types()
    assert [e.data for e in events if e.is_chunk] == [e.data for e in local if e.is_chunk]
    assert events[0].data == {"query": "what is rag?"}
    assert events[1].data["num_docs"] == 2
    ids = [tuple(int(part) for part in e.id.split("-")) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[0].latency == 0.0


async def test_astream_aquery_and_stats(served):
    chunks = [c async for c in served.astream("q1")]
    assert "".join(chunks) == ANSWER
    result = await served.aquery("q2")
    assert result["answer"] == ANSWER
    assert types(result["events"]) == expected_types()
    stats = served.stats
    assert stats["total_streams"] == 2
    assert stats["total_chunks"] == 2 * len(ANSWER_WORDS)
    assert stats["total_errors"] == 0
    done = [e for e in result["events"] if e.type is EventType.GENERATION_DONE]
    assert stats["avg_stream_latency_s"] >= 0.0 and done


async def test_sync_surfaces_from_a_thread(served):
    def sync_calls() -> tuple[list[str], list[StreamEvent], dict]:
        with StreamingRAGClient(served.url, prefix=served.prefix, poll_interval_s=0.2) as rag:
            chunks = list(rag.stream("s1"))
            events = list(rag.stream_events("s2"))
            result = rag.query("s3")
            return chunks, events, result

    chunks, events, result = await asyncio.to_thread(sync_calls)
    assert "".join(chunks) == ANSWER
    assert types(events) == expected_types()
    assert result["answer"] == ANSWER and len(result["events"]) == len(expected_types())


async def test_ten_concurrent_subscribers_see_identical_events(served):
    job_id = await served.asubmit("shared question")

    async def subscribe() -> list[StreamEvent]:
        return [e async for e in served.aevents(job_id)]

    results = await asyncio.gather(*(subscribe() for _ in range(10)))
    assert all(r == results[0] for r in results)
    assert types(results[0]) == expected_types()


async def test_attach_after_completion_replays_the_full_trace_and_resume_after_fifth(served):
    job_id = await served.asubmit("late joiners")
    live = [e async for e in served.aevents(job_id)]
    assert await served.astatus(job_id) is JobStatus.DONE
    again = [e async for e in served.aevents(job_id)]
    assert again == live and types(live) == expected_types()
    rest = [e async for e in served.aevents(job_id, after=live[4].id)]
    assert rest == live[5:]
    assert [e async for e in served.aevents(job_id, after=live[-1].id)] == []


async def test_replay_speed_zero_is_the_trace(served):
    job_id = await served.asubmit("replay me")
    live = [e async for e in served.aevents(job_id)]
    replayed = [e async for e in served.areplay(job_id, speed=0)]
    assert replayed == live


async def test_status_and_retention_ttl(served, events_client):
    job_id = await served.asubmit("ttl")
    _ = [e async for e in served.aevents(job_id)]
    assert await served.astatus(job_id) is JobStatus.DONE
    keys = JobKeys(served.prefix, job_id)
    for key in (keys.events, keys.meta):
        ttl = events_client.pttl(key)
        assert 0 < ttl <= 3600 * 1000
    assert events_client.exists(keys.lease) == 0
    assert await served.astatus("no-such-job") is JobStatus.NOT_FOUND


async def test_duplicate_job_id_is_refused_not_run_twice(served, events_client):
    await served.asubmit("once", job_id="fixed-id")
    with pytest.raises(DuplicateJob, match="fixed-id"):
        await served.asubmit("twice", job_id="fixed-id")
    events = [e async for e in served.aevents("fixed-id")]
    assert events[0].data == {"query": "once"}
    assert events_client.xlen(JobKeys(served.prefix, "fixed-id").events) == len(expected_types())


async def test_unknown_job_raises_job_not_found(served):
    with pytest.raises(JobNotFound, match="nope"):
        _ = [e async for e in served.aevents("nope")]
    with pytest.raises(JobNotFound):
        await served.acancel("nope")


def test_sync_unknown_job_raises_job_not_found(redis_url, key_prefix):
    with StreamingRAGClient(redis_url, prefix=key_prefix) as rag:
        with pytest.raises(JobNotFound):
            list(rag.events("missing-job"))
        assert rag.status("missing-job") is JobStatus.NOT_FOUND


def test_unreachable_server_names_the_url():
    rag = StreamingRAGClient("redis://user:secret@127.0.0.1:1/0")
    with pytest.raises(ServerUnavailable) as info:
        rag.submit("hello")
    assert "redis://user:***@127.0.0.1:1/0" in str(info.value)
    assert "secret" not in str(info.value)


async def test_async_unreachable_server_names_the_url():
    rag = StreamingRAGClient("redis://127.0.0.1:1/0")
    with pytest.raises(ServerUnavailable, match=re.escape("127.0.0.1:1")):
        await rag.asubmit("hello")
    await rag.aclose()


async def test_a_corrupt_entry_gives_the_decode_error(served, aevents_client):
    bad_id = await aevents_client.xadd(JobKeys(served.prefix, "bad-stream").events, {"e": b"\xc1"})
    await aevents_client.hset(JobKeys(served.prefix, "bad-stream").meta, "status", "running")
    with pytest.raises(EventDecodeError) as info:
        _ = [e async for e in served.aevents("bad-stream")]
    assert info.value.job_id == "bad-stream"
    assert info.value.entry_id == bad_id.decode()


@pytest.mark.parametrize(
    ("query", "context", "message"),
    [
        ("", None, "query must be a non-empty string"),
        (7, None, "query must be a str"),
        ("x" * 40, None, "query is 40 characters; the limit is 32"),
        ("ok", {"x": {1, 2}}, "context must hold only msgpack-able values"),
    ],
)
def test_invalid_submits_are_refused_before_anything_is_queued(
    redis_url, key_prefix, redis_client, query, context, message
):
    with (
        StreamingRAGClient(redis_url, prefix=key_prefix, max_query_chars=32) as rag,
        pytest.raises(InvalidRequest, match=re.escape(message)),
    ):
        rag.submit(query, context)
    assert redis_client.zcard(f"{key_prefix}:queue") == 0
    assert list(redis_client.scan_iter(match=f"{key_prefix}*")) == []


def test_a_malformed_job_id_is_refused_before_any_io():
    rag = StreamingRAGClient("redis://127.0.0.1:1/0")  # unreachable: any I/O would fail
    with pytest.raises(InvalidRequest, match="job_id must be"):
        next(rag.events("bad id with spaces"))
    with pytest.raises(InvalidRequest, match="job_id must be"):
        rag.submit("fine", job_id="{bad}")
