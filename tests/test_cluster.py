"""The events on a real Redis Cluster (3 masters, 1 replica each), the queue on a standalone
server: many subscribers, a slot migrated mid-answer, a master killed mid-answer.

Every test checks the same contract as on one server: each subscriber sees every event of the
job exactly once, in stream order, ending with exactly one terminal event, and that trace is
what the stream holds (a replay).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag.wire import JobKeys
from streaming_rag.wire.keys import BUCKETS
from streaming_rag_cli.embedded_cluster import EmbeddedCluster
from streaming_rag_client import JobStatus, StreamingRAGClient
from tests.helpers_queue import running_worker
from tests.queue_apps import WordsLLM, make_rag

WAIT_S = 60.0


class SteppedLLM:
    """Yields `per` tokens per phase; phase i > 0 starts once `go(i)` is called (on the
    loop), so a test can act on the cluster between two parts of an answer."""

    def __init__(self, phases: int = 3, per: int = 10) -> None:
        self.phases, self.per = phases, per
        self.gates = [asyncio.Event() for _ in range(phases)]

    def go(self, phase: int) -> None:
        self.gates[phase].set()

    def finish(self) -> None:
        for gate in self.gates:
            gate.set()

    def tokens(self) -> list[str]:
        return [f"p{i}t{j} " for i in range(self.phases) for j in range(self.per)]

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for i in range(self.phases):
            if i:
                await self.gates[i].wait()
            for j in range(self.per):
                yield f"p{i}t{j} "


def assert_exact(trace: list[StreamEvent], replay: list[StreamEvent]) -> None:
    """`trace` is the whole stream, once, in order, with one terminal event at the end."""
    assert trace == replay
    ids = [tuple(int(x) for x in (e.id or "").split("-")) for e in trace]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e.is_terminal for e in trace].count(True) == 1 and trace[-1].is_terminal


def saw(events: list[StreamEvent], token: str) -> bool:
    return any(e.data == token for e in events)


async def until_seen(lists: list[list[StreamEvent]], token: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not all(saw(events, token) for events in lists):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # subscribers announce nothing else


async def test_a_thousand_subscribers_over_a_hundred_jobs_each_see_every_event_once(
    redis_url: str, key_prefix: str, valkey_cluster: EmbeddedCluster
) -> None:
    words = [f"w{i}" for i in range(20)]
    # the worker shares this event loop with the 1,000 subscribers: on a busy machine the loop
    # can lag past the default 3 s lease, which is not what this test is about
    async with running_worker(
        redis_url,
        key_prefix,
        make_rag(WordsLLM(words)),
        events_url=valkey_cluster.url,
        lease_s=30.0,
    ):
        rag = StreamingRAGClient(redis_url, events_url=valkey_cluster.url, prefix=key_prefix)
        try:
            ids = await asyncio.gather(*(rag.asubmit(f"q{i}") for i in range(100)))

            async def follow(job_id: str) -> list[StreamEvent]:
                return [e async for e in rag.aevents(job_id)]

            tasks = [follow(job_id) for job_id in ids for _ in range(10)]
            traces = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
            assert rag._fanout is not None and rag._fanout.readers <= BUCKETS
            replays = {j: [e async for e in rag.areplay(j, speed=0)] for j in ids}
        finally:
            await rag.aclose()
    assert len(traces) == 1000
    for i, trace in enumerate(traces):
        job_id = ids[i // 10]
        assert_exact(trace, replays[job_id])
        assert trace[-1].type is EventType.GENERATION_DONE, trace[-1]
        assert [e.data for e in trace if e.is_chunk] == [w + " " for w in words]
        assert trace[-1].type is EventType.GENERATION_DONE
    slots = {valkey_cluster.key_slot(JobKeys(key_prefix, j).events) for j in ids}
    masters = {valkey_cluster.node_for_slot(slot).port for slot in slots}
    assert len(masters) == 3, "100 jobs spread over every shard"


async def _subscribers(
    rag: StreamingRAGClient, own: StreamingRAGClient, job_id: str
) -> tuple[list[list[StreamEvent]], list[asyncio.Task[None]]]:
    """Two fan-out subscribers, one with its own reads, one sync (in a thread): each appends
    to its own list as events arrive."""
    lists: list[list[StreamEvent]] = [[], [], [], []]

    async def fan(out: list[StreamEvent], client: StreamingRAGClient) -> None:
        async for event in client.aevents(job_id):
            out.append(event)

    def sync(out: list[StreamEvent]) -> None:
        with StreamingRAGClient(rag.url, events_url=rag.events_url, prefix=rag.prefix) as c:
            for event in c.events(job_id):
                out.append(event)

    tasks = [
        asyncio.create_task(fan(lists[0], rag)),
        asyncio.create_task(fan(lists[1], rag)),
        asyncio.create_task(fan(lists[2], own)),
        asyncio.create_task(asyncio.to_thread(sync, lists[3])),
    ]
    return lists, tasks


async def _answer_across(
    redis_url: str, key_prefix: str, cluster: EmbeddedCluster, act: Any, **worker: Any
) -> tuple[list[list[StreamEvent]], list[StreamEvent], SteppedLLM, str]:
    """Run one stepped answer; between phase 0 and 1 run `act(slot)` (sync, in a thread);
    return every subscriber's trace, the replay, the LLM and the job id."""
    llm = SteppedLLM()
    url = cluster.url
    async with running_worker(redis_url, key_prefix, make_rag(llm), events_url=url, **worker):
        rag = StreamingRAGClient(redis_url, events_url=url, prefix=key_prefix, reconnect_s=WAIT_S)
        own = StreamingRAGClient(
            redis_url, events_url=url, prefix=key_prefix, fanout=False, reconnect_s=WAIT_S
        )
        try:
            job_id = await rag.asubmit("across the cluster")
            lists, tasks = await _subscribers(rag, own, job_id)
            await until_seen(lists, "p0t9 ")
            slot = cluster.key_slot(JobKeys(key_prefix, job_id).events)
            await asyncio.to_thread(act, slot, llm, asyncio.get_running_loop())
            llm.finish()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
            replay = [e async for e in rag.areplay(job_id, speed=0)]
            assert await rag.astatus(job_id) is JobStatus.DONE
        finally:
            llm.finish()
            await rag.aclose()
            await own.aclose()
    return lists, replay, llm, job_id


async def test_a_slot_migrated_mid_answer_loses_and_repeats_nothing(
    redis_url: str, key_prefix: str, fresh_cluster: EmbeddedCluster
) -> None:
    moved: dict[str, int] = {}

    def migrate(slot: int, llm: SteppedLLM, loop: asyncio.AbstractEventLoop) -> None:
        source = fresh_cluster.node_for_slot(slot)
        target = next(m for m in fresh_cluster.masters() if m.port != source.port)
        migration = fresh_cluster.begin_migration(slot, target)
        assert fresh_cluster.move_keys(migration) >= 3  # events, job hash, lease
        # phase 1 is written while the slot is half-way: ASK redirects for every party
        loop.call_soon_threadsafe(llm.go, 1)
        fresh_cluster.finish_migration(migration)
        moved.update(source=source.port, target=target.port)

    lists, replay, llm, job_id = await _answer_across(redis_url, key_prefix, fresh_cluster, migrate)
    slot = fresh_cluster.key_slot(JobKeys(key_prefix, job_id).events)
    assert fresh_cluster.node_for_slot(slot).port == moved["target"] != moved["source"]
    for trace in lists:
        assert_exact(trace, replay)
        assert [e.data for e in trace if e.is_chunk] == llm.tokens()


async def test_a_master_killed_mid_answer_fails_over_and_loses_nothing(
    redis_url: str, key_prefix: str, fresh_cluster: EmbeddedCluster
) -> None:
    promoted: dict[str, int] = {}

    def kill(slot: int, llm: SteppedLLM, loop: asyncio.AbstractEventLoop) -> None:
        master = fresh_cluster.node_for_slot(slot)
        fresh_cluster.kill_master(master)
        loop.call_soon_threadsafe(llm.go, 1)  # written while the shard has no primary
        replica = fresh_cluster.wait_for_failover(master, timeout_s=30)
        promoted.update(old=master.port, new=replica.port)
        fresh_cluster.restart_node(master)  # back as the new primary's replica (WAIT acks)

    lists, replay, llm, _ = await _answer_across(
        redis_url, key_prefix, fresh_cluster, kill, lease_s=10.0, heartbeat_s=1.0
    )
    assert promoted["new"] != promoted["old"]
    for trace in lists:
        assert_exact(trace, replay)
        assert [e.data for e in trace if e.is_chunk] == llm.tokens()


def test_a_cluster_url_for_the_queue_is_refused_with_what_to_do(valkey_cluster: EmbeddedCluster):
    from streaming_rag.exceptions import InvalidRequest, WorkerConfigError
    from streaming_rag_worker import WorkerConfig

    with pytest.raises(InvalidRequest, match="events_url"):
        StreamingRAGClient(valkey_cluster.url)
    with pytest.raises(WorkerConfigError, match="events_url"):
        WorkerConfig(redis_url=valkey_cluster.url)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nobody listens


async def test_an_unreachable_events_cluster_is_a_typed_error_naming_it_masked(
    redis_url: str, key_prefix: str
) -> None:
    from streaming_rag.exceptions import ServerUnavailable, WorkerConfigError

    url = f"redis+cluster://:s3cret@127.0.0.1:{_closed_port()}"
    rag = StreamingRAGClient(redis_url, events_url=url, prefix=key_prefix)
    try:
        with pytest.raises(ServerUnavailable) as sync_info:
            rag.submit("anyone?")
        with pytest.raises(ServerUnavailable) as async_info:
            await rag.asubmit("anyone?")
    finally:
        await rag.aclose()
    for info in (sync_info, async_info):
        assert "redis+cluster://:***@127.0.0.1:" in str(info.value)
        assert "s3cret" not in str(info.value)
    from streaming_rag_worker import WorkerConfig, build_worker

    config = WorkerConfig(
        redis_url=redis_url, events_url=url, prefix=key_prefix, startup_wait_s=0.3
    )
    worker = build_worker(config, rag=make_rag(), handle_signals=False)
    with pytest.raises(WorkerConfigError, match=r"events server .*:\*\*\*@") as worker_info:
        await asyncio.wait_for(worker.async_run(), WAIT_S)
    await worker.close()
    assert "s3cret" not in str(worker_info.value)


async def test_a_queue_server_restart_mid_answer_leaves_the_answer_on_the_cluster_whole(
    tmp_path: Any, key_prefix: str, valkey_cluster: EmbeddedCluster
) -> None:
    """Events on the cluster, the queue on its own server, restarted (SIGTERM, AOF kept) while
    an answer streams: the answer goes on (its keys, heartbeats and publishes are all on the
    cluster), every subscriber gets it whole, and the worker takes the next job once the queue
    server is back (ENQUEUE, the wake-up and CLAIM on the restarted server)."""
    from streaming_rag_cli.embedded import EmbeddedValkey

    with EmbeddedValkey(data_dir=tmp_path / "queue", appendonly=True) as queue:

        def restart(slot: int, llm: SteppedLLM, loop: asyncio.AbstractEventLoop) -> None:
            queue.restart()
            loop.call_soon_threadsafe(llm.go, 1)

        lists, replay, llm, _ = await _answer_across(queue.url, key_prefix, valkey_cluster, restart)
        for trace in lists:
            assert_exact(trace, replay)
            assert [e.data for e in trace if e.is_chunk] == llm.tokens()
        async with running_worker(
            queue.url, key_prefix, make_rag(WordsLLM(["after"])), events_url=valkey_cluster.url
        ):
            rag = StreamingRAGClient(queue.url, events_url=valkey_cluster.url, prefix=key_prefix)
            try:
                after = await asyncio.wait_for(rag.aquery("after the restart"), WAIT_S)
            finally:
                await rag.aclose()
        assert after["answer"] == "after "
