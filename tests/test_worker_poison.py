"""Poison never kills: any queue record a worker cannot run ends its job with one typed ERROR
(when the job id can be recovered) and leaves the queue; the worker survives and serves on.
And nothing lingers: a live worker's sweep ends jobs nobody watches."""

from __future__ import annotations

from typing import Any

import msgpack
import redis.asyncio

from streaming_rag import EventType
from streaming_rag.wire import JobKeys, pack_job
from streaming_rag.wire.keys import index_key
from streaming_rag.wire.models import JOB_FUNCTION
from streaming_rag.wire.scripts import START, start_call
from streaming_rag_client import JobStatus, StreamingRAGClient
from tests.helpers_queue import running_worker, until
from tests.queue_apps import make_rag

WAIT_S = 30.0


async def poison(client: StreamingRAGClient, r: Any, prefix: str, record: bytes) -> str:
    """Submit a real job, then replace its arq record with `record` before a worker runs."""
    job_id = await client.asubmit("q")
    await r.set(JobKeys(prefix, job_id).arq_job, record)
    return job_id


async def test_records_that_do_not_fit_end_their_jobs_with_a_typed_error(
    redis_url: str, key_prefix: str
) -> None:
    r = redis.asyncio.Redis.from_url(redis_url)
    client = StreamingRAGClient(redis_url, prefix=key_prefix, start_timeout=WAIT_S)
    try:
        cases = {
            "newer client": lambda jid: pack_job(
                {
                    "t": None,
                    "f": JOB_FUNCTION,
                    "a": [],
                    "k": {"job_id": jid, "request": {"query": "q"}, "lang": "fr"},
                    "et": 1,
                }
            ),
            "positional": lambda jid: pack_job(
                {"t": None, "f": JOB_FUNCTION, "a": [1], "k": {}, "et": 1}
            ),
            "bad payload": lambda jid: pack_job(
                {"t": None, "f": JOB_FUNCTION, "a": [], "k": {"job_id": jid, "request": 7}, "et": 1}
            ),
            "not msgpack": lambda jid: b"\xc1\xc1 garbage",
        }
        jobs: dict[str, str] = {}
        for name, make in cases.items():
            job_id = await client.asubmit("q")  # queued: no worker runs yet
            await r.set(JobKeys(key_prefix, job_id).arq_job, make(job_id))
            jobs[name] = job_id
        async with running_worker(redis_url, key_prefix, make_rag()):
            for name, job_id in jobs.items():
                events = [e async for e in client.aevents(job_id)]
                assert [e.is_terminal for e in events].count(True) == 1, name
                error = events[-1]
                assert error.type is EventType.ERROR, name
                assert error.data["stage"] == "queue", name
                assert error.data["msg"].startswith("invalid job payload: "), name
            assert "lang" in (await _last_error(client, jobs["newer client"]))["msg"]
            # the worker survived all of them and answers the next question
            ok = await client.aquery("still alive?")
            assert ok["events"][-1].type is EventType.GENERATION_DONE
            # arq's bookkeeping runs just after each job's terminal event
            await until(lambda: _zcard_is(r, f"{key_prefix}:queue", 0), "an empty queue")
    finally:
        await client.aclose()
        await r.aclose()


async def _last_error(client: StreamingRAGClient, job_id: str) -> dict[str, Any]:
    events = [e async for e in client.aevents(job_id)]
    data: dict[str, Any] = events[-1].data
    return data


async def test_a_queue_member_that_is_not_utf8_is_dropped_and_the_worker_serves_on(
    redis_url: str, key_prefix: str
) -> None:
    r = redis.asyncio.Redis.from_url(redis_url)
    client = StreamingRAGClient(redis_url, prefix=key_prefix, start_timeout=WAIT_S)
    try:
        await r.zadd(f"{key_prefix}:queue", {b"\xff\xfe not utf-8": 1})
        await r.rpush(f"{key_prefix}:wake", b"\xff\xfe not utf-8")
        async with running_worker(redis_url, key_prefix, make_rag()):
            ok = await client.aquery("after the poison")
            assert ok["events"][-1].type is EventType.GENERATION_DONE
            await until(
                lambda: _zcard_is(r, f"{key_prefix}:queue", 0), "the poison to leave the queue"
            )
    finally:
        await client.aclose()
        await r.aclose()


async def _zcard_is(r: Any, key: str, n: int) -> bool:
    return int(await r.zcard(key)) == n


async def test_the_sweep_ends_a_job_whose_worker_died_while_nobody_watched(
    redis_url: str, key_prefix: str, aevents_client: Any
) -> None:
    """A job started by a worker that then vanished (its lease expires) and that no subscriber
    follows: a live worker's sweep appends "Worker lost", sets the retention TTL and clears
    arq's records, with nobody calling CHECK by hand."""
    r = redis.asyncio.Redis.from_url(redis_url)  # the queue server
    ev = aevents_client  # where the job's own keys live
    client = StreamingRAGClient(redis_url, prefix=key_prefix, start_timeout=WAIT_S)
    try:
        job_id = await client.asubmit("orphan")
        keys = JobKeys(key_prefix, job_id)
        await r.zrem(keys.queue, keys.arq_job_id)  # taken by a worker that then died:
        call = start_call(keys, lease_ms=200, worker="ghost")  # START with a short lease
        assert await ev.eval(START, len(call.keys), *call.keys, *call.args) == b"ok"
        await r.zadd(index_key(key_prefix), {job_id: 0})  # due now
        async with running_worker(redis_url, key_prefix, make_rag(), heartbeat_s=0.1):
            await until(lambda: _status_is(ev, keys, b"failed"), "the sweep to end the job")
        events = [e async for e in client.aevents(job_id)]
        assert [e.data for e in events if e.is_terminal] == [
            {"stage": "worker", "msg": "Worker lost"}
        ]
        assert await ev.ttl(keys.meta) > 0 and await ev.ttl(keys.events) > 0
        # with the events apart (a cluster) the queue side is a second call after CHECK
        await until(lambda: _queue_side_clear(r, keys), "arq's records and the index entry")
        assert not await r.exists(keys.arq_job, keys.arq_in_progress, keys.arq_retry)
        assert await r.zscore(index_key(key_prefix), job_id) is None
        assert await client.astatus(job_id) is JobStatus.FAILED
    finally:
        await client.aclose()
        await r.aclose()


async def _queue_side_clear(r: Any, keys: JobKeys) -> bool:
    records = await r.exists(keys.arq_job, keys.arq_in_progress, keys.arq_retry)
    return not records and await r.zscore(index_key(keys.prefix), keys.job_id) is None


async def _status_is(r: Any, keys: JobKeys, status: bytes) -> bool:
    return bool(await r.hget(keys.meta, "status") == status)


def test_pack_job_round_trips_with_msgpack() -> None:
    """The poison cases above are built with the worker's own serializer."""
    packed = pack_job({"f": JOB_FUNCTION, "k": {"a": 1}})
    assert msgpack.unpackb(packed) == {"f": JOB_FUNCTION, "k": {"a": 1}}


async def test_each_job_state_change_is_one_structured_log_line(
    redis_url: str, key_prefix: str, caplog: Any
) -> None:
    caplog.set_level("INFO", logger="streaming_rag.jobs")
    async with (
        running_worker(redis_url, key_prefix, make_rag()) as worker,
        StreamingRAGClient(redis_url, prefix=key_prefix) as client,
    ):
        result = await client.aquery("log me")
    assert result["events"][-1].type is EventType.GENERATION_DONE
    lines = [r for r in caplog.records if r.name == "streaming_rag.jobs"]
    job_id = lines[0].job_id
    assert [r.status for r in lines] == ["running", "done"]
    assert all(r.job_id == job_id and r.worker == worker.runtime.config.name for r in lines)
    assert lines[0].queue_ms >= 0 and lines[1].duration_ms >= 0
    assert lines[1].getMessage().startswith(f"job {job_id} done on ")
