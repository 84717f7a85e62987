"""Workers are woken by submits (no polling), never stampede, and stock arq still runs jobs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from streaming_rag import EventType
from streaming_rag.wire import JobKeys
from streaming_rag.wire.keys import wake_key
from streaming_rag_client import JobStatus, StreamingRAGClient
from tests.helpers_queue import ROOT, running_worker
from tests.queue_apps import GatedLLM, make_rag

WAIT_S = 30.0
NEVER_S = 3600.0  # a fallback poll period no test can wait for


async def test_a_submit_wakes_an_idle_worker_without_waiting_for_its_poll(redis_url, key_prefix):
    rag = make_rag()
    async with running_worker(redis_url, key_prefix, rag) as worker:
        worker.poll_delay_s = NEVER_S  # from now on only wake-ups can start a job
        client = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            for _ in range(3):  # the worker may be in its first (short) poll wait
                events = await asyncio.wait_for(client.aquery("wake up"), WAIT_S)
            assert events["events"][-1].type is EventType.GENERATION_DONE
        finally:
            await client.aclose()


async def test_a_full_worker_leaves_the_wake_up_to_an_idle_peer(
    redis_url, key_prefix, aredis_client, aevents_client
):
    busy_llm = GatedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(busy_llm), concurrency=1) as a:
        a.poll_delay_s = NEVER_S
        client = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            first = await client.asubmit("occupies worker A")
            assert await asyncio.to_thread(busy_llm.started.wait, WAIT_S)
            async with running_worker(redis_url, key_prefix, make_rag()) as b:
                b.poll_delay_s = NEVER_S
                # wait until B is blocked on the wake list (A, being full, takes no tokens)
                async with asyncio.timeout(WAIT_S):
                    while not await _someone_waits_on(aredis_client, wake_key(key_prefix)):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                second = await client.asubmit("must go to worker B")
                events = [e async for e in client.aevents(second)]
                assert events[-1].type is EventType.GENERATION_DONE
                assert await aredis_client.llen(wake_key(key_prefix)) == 0  # B took the token
                meta = await aevents_client.hgetall(JobKeys(key_prefix, second).meta)
                assert meta[b"worker"].decode() == b.runtime.config.name
            assert await client.astatus(first) is JobStatus.RUNNING
            assert busy_llm.release is not None
            busy_llm.release.set()
            done = [e async for e in client.aevents(first)]
            assert done[-1].type is EventType.GENERATION_DONE
        finally:
            await client.aclose()


async def test_one_wake_up_starts_one_job_once_with_several_workers(redis_url, key_prefix):
    async with (
        running_worker(redis_url, key_prefix, make_rag()),
        running_worker(redis_url, key_prefix, make_rag()),
        running_worker(redis_url, key_prefix, make_rag()),
    ):
        client = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            ids = [await client.asubmit(f"q{i}") for i in range(20)]
            traces = [[e async for e in client.aevents(j)] for j in ids]
        finally:
            await client.aclose()
    for trace in traces:
        kinds = [e.type for e in trace]
        assert kinds.count(EventType.RETRIEVAL_START) == 1  # run once, never twice
        assert kinds[-1] is EventType.GENERATION_DONE


def test_stock_arq_runs_the_jobs_with_worker_settings(redis_url, key_prefix):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "STREAMING_RAG_APP": "tests.queue_apps:words_app",
        "STREAMING_RAG_PREFIX": key_prefix,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "arq", "streaming_rag_worker.WorkerSettings"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.2) as client:
            result = client.query("served by arq's own runner")
        assert result["events"][-1].type is EventType.GENERATION_DONE
        assert result["answer"].startswith("w0 w1 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT_S)
        finally:
            proc.kill()


async def _someone_waits_on(redis_client, key: str) -> bool:
    """True when a client connection is blocked in BLMOVE (on any key: tests use their own
    server prefix, and only this test's workers run here)."""
    clients = await redis_client.client_list()
    return any(c.get("cmd") == "blmove" and c.get("flags", "").find("b") >= 0 for c in clients)
