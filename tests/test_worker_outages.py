"""The worker rides through Redis outages for real: a dedicated embedded Valkey (appendonly, so
its data survives) is stopped, crashed and restarted under a running answer; a stream that lost
its tail is repaired; a job whose outage outlasts its lease ends once, as "Worker lost"."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from streaming_rag import EventType, StreamConfig, StreamingRAG
from streaming_rag.wire import JobKeys
from streaming_rag.wire.ids import parse_entry_id
from streaming_rag_cli.embedded import EmbeddedValkey
from streaming_rag_client import StreamingRAGClient
from tests.helpers_queue import running_worker, until
from tests.queue_apps import Backend

pytestmark = pytest.mark.single_server

WAIT_S = 30.0


class SteppedLLM:
    """Yields `before` tokens, then waits for `gate` (set by the test), then yields `after`
    more tokens; `reached` is set once the first `before` were yielded. The worker runs in the
    test's event loop, so both are asyncio events."""

    def __init__(self, before: int, after: int) -> None:
        self.before, self.after = before, after
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for i in range(self.before):
            yield f"t{i} "
        self.reached.set()
        await self.gate.wait()
        for i in range(self.before, self.before + self.after):
            yield f"t{i} "


@pytest.fixture
def server(tmp_path: Any) -> Iterator[EmbeddedValkey]:
    """A server of this test's own, which the test may stop, crash and restart."""
    with EmbeddedValkey(appendonly=True, data_dir=tmp_path / "valkey") as srv:
        yield srv


async def status_of(url: str, keys: JobKeys) -> str | None:
    r = redis.asyncio.Redis.from_url(url)
    try:
        raw = await r.hget(keys.meta, "status")
    except redis.exceptions.ConnectionError:
        return None
    finally:
        await r.aclose()
    return raw.decode() if raw else None


def assert_one_clean_trace(events: list[Any], tokens: int) -> None:
    """Every token once, in order, ids increasing, exactly one terminal event at the end."""
    ids = [parse_entry_id(e.id) for e in events]
    assert ids == sorted(set(ids)), "entry ids repeat or go back"
    chunks = [e.data for e in events if e.type is EventType.CHUNK]
    assert chunks == [f"t{i} " for i in range(tokens)]
    assert [e.is_terminal for e in events].count(True) == 1
    assert events[-1].type is EventType.GENERATION_DONE


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash-restart"])
async def test_a_restart_mid_answer_loses_nothing_and_the_worker_serves_on(
    server: EmbeddedValkey, key_prefix: str, crash: bool
) -> None:
    llm = SteppedLLM(before=10, after=20)
    rag = StreamingRAG(Backend(), llm, StreamConfig(generation_timeout=120))
    async with running_worker(server.url, key_prefix, rag, lease_s=20.0, heartbeat_s=1.0):
        client = StreamingRAGClient(server.url, prefix=key_prefix, start_timeout=WAIT_S)
        job_id = await client.asubmit("q")
        keys = JobKeys(key_prefix, job_id)
        await asyncio.wait_for(llm.reached.wait(), WAIT_S)
        # the first tokens are in the stream before the outage
        probe = redis.asyncio.Redis.from_url(server.url)
        await until(lambda: _xlen_at_least(probe, keys.events, 13), "the first tokens")
        await probe.aclose()
        await client.aclose()
        if crash:
            await asyncio.to_thread(server.kill)
        else:
            await asyncio.to_thread(server.shutdown)
        llm.gate.set()  # 20 more tokens are produced while the server is down
        await asyncio.sleep(0.3)  # the outage itself: the worker must retry through it
        await asyncio.to_thread(server.restart)
        await until(lambda: _is(status_of(server.url, keys), "done"), "the job to finish", WAIT_S)
        async with StreamingRAGClient(server.url, prefix=key_prefix) as client:
            events = [e async for e in client.aevents(job_id)]
            assert_one_clean_trace(events, 30)
            # and the same worker answers a new question after the outage
            again = await client.aquery("again")
            assert again["events"][-1].type is EventType.GENERATION_DONE


async def _xlen_at_least(r: redis.asyncio.Redis, key: str, n: int) -> bool:
    return int(await r.xlen(key)) >= n


async def _is(awaitable: Any, expected: str) -> bool:
    return bool(await awaitable == expected)


async def test_a_stream_that_lost_its_tail_is_repaired_with_the_original_ids(
    redis_url: str, key_prefix: str
) -> None:
    """What a failover does to a stream (the promoted replica missed the last writes), done by
    hand: the stream is rebuilt without its last entries while the answer is paused; the worker
    finds it shorter than what it wrote and re-appends the lost entries with the same ids."""
    llm = SteppedLLM(before=10, after=5)
    rag = StreamingRAG(Backend(), llm, StreamConfig(generation_timeout=120))
    r = redis.asyncio.Redis.from_url(redis_url)
    async with running_worker(redis_url, key_prefix, rag, lease_s=20.0):
        client = StreamingRAGClient(redis_url, prefix=key_prefix, start_timeout=WAIT_S)
        job_id = await client.asubmit("q")
        keys = JobKeys(key_prefix, job_id)
        await asyncio.wait_for(llm.reached.wait(), WAIT_S)
        await until(lambda: _xlen_at_least(r, keys.events, 13), "the first tokens")
        before = await r.xrange(keys.events)
        kept = before[:-4]
        async with r.pipeline(transaction=True) as pipe:  # a replica that missed 4 entries
            pipe.delete(keys.events)
            for entry_id, fields in kept:
                pipe.xadd(keys.events, fields, id=entry_id)
            await pipe.execute()
        llm.gate.set()
        await until(lambda: _is(status_of(redis_url, keys), "done"), "the job to finish")
        after = await r.xrange(keys.events)
        assert [e[0] for e in after[: len(before)]] == [e[0] for e in before]
        assert after[: len(before)] == before  # same ids, same payloads
        events = [e async for e in client.aevents(job_id)]
        assert_one_clean_trace(events, 15)
        await client.aclose()
    await r.aclose()


async def test_an_outage_longer_than_the_lease_ends_the_job_once_as_worker_lost(
    server: EmbeddedValkey, key_prefix: str
) -> None:
    llm = SteppedLLM(before=3, after=5)
    rag = StreamingRAG(Backend(), llm, StreamConfig(generation_timeout=120))
    async with running_worker(server.url, key_prefix, rag, lease_s=1.0, heartbeat_s=0.25):
        client = StreamingRAGClient(server.url, prefix=key_prefix, start_timeout=WAIT_S)
        job_id = await client.asubmit("q")
        keys = JobKeys(key_prefix, job_id)
        await asyncio.wait_for(llm.reached.wait(), WAIT_S)
        await client.aclose()
        await asyncio.to_thread(server.shutdown)
        llm.gate.set()
        await asyncio.sleep(1.5)  # the outage must outlast the 1 s lease: that is the case
        await asyncio.to_thread(server.restart)
        await until(lambda: _is(status_of(server.url, keys), "failed"), "the job to be lost")
        async with StreamingRAGClient(server.url, prefix=key_prefix) as client:
            events = [e async for e in client.aevents(job_id)]
    assert [e.is_terminal for e in events].count(True) == 1
    assert events[-1].data == {"stage": "worker", "msg": "Worker lost"}
