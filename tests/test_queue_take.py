"""TAKE, the claim folded into the wake-up: one pipeline (BLMOVE a token, then the script) claims
and STARTs a submitted job at most once, on a real server."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from streaming_rag.wire import JobKeys
from streaming_rag.wire.keys import taken_key, wake_key
from streaming_rag.wire.scripts import ENQUEUE, SUBMIT, TAKE, enqueue_call, submit_call, take_call

WAIT_S = 10.0


async def _submit(client: Any, keys: JobKeys, *, with_queue: bool = True) -> None:
    kwargs: dict[str, Any] = {
        "record": b"arq-record",
        "now_ms": int(time.time() * 1000),
        "start_timeout_ms": 30_000,
        "record_ttl_ms": 60_000,
        "nonce": uuid.uuid4().hex,
    }
    call = submit_call(keys, with_queue=with_queue, **kwargs)
    assert await client.eval(SUBMIT, len(call.keys), *call.keys, *call.args) == 1
    if not with_queue:  # the split layout's queue half, run on the same server here
        enq = enqueue_call(keys, **kwargs)
        assert await client.eval(ENQUEUE, len(enq.keys), *enq.keys, *enq.args) == 1


async def _take(
    client: Any, prefix: str, *, worker: str = "w1", free: int = 1, with_start: bool = True
) -> tuple[Any, list[Any]]:
    """One wake-up, exactly as the worker sends it: BLMOVE then TAKE in one pipeline."""
    call = take_call(
        f"{prefix}:queue",
        taken_key(prefix),
        in_progress_ttl_ms=60_000,
        lease_ms=3_000,
        worker=worker,
        free=free,
        with_start=with_start,
    )
    sha = await client.script_load(TAKE)
    pipe = client.pipeline(transaction=False)
    pipe.execute_command("BLMOVE", wake_key(prefix), taken_key(prefix), "LEFT", "RIGHT", 0.05)
    pipe.execute_command("EVALSHA", sha, len(call.keys), *call.keys, *call.args)
    moved, claimed = await asyncio.wait_for(pipe.execute(), WAIT_S)
    return moved, list(claimed)


async def test_the_wake_up_reply_carries_the_started_job(aredis_client, key_prefix):
    keys = JobKeys(key_prefix, "job-a")
    await _submit(aredis_client, keys)
    moved, claimed = await _take(aredis_client, key_prefix)
    assert moved is not None and moved.startswith(keys.arq_job_id.encode() + b"\t")
    job_id, _score, verdict, record, tries = claimed
    assert (job_id, verdict, record, tries) == (keys.arq_job_id.encode(), b"ok", b"arq-record", 1)
    meta = await aredis_client.hgetall(keys.meta)
    assert meta[b"status"] == b"running" and meta[b"worker"] == b"w1"
    assert await aredis_client.get(keys.lease) == b"w1"
    assert await aredis_client.exists(keys.arq_in_progress) == 1
    assert await aredis_client.llen(taken_key(key_prefix)) == 0


async def test_a_job_is_claimed_at_most_once_whoever_pops_its_tokens(aredis_client, key_prefix):
    keys = JobKeys(key_prefix, "job-b")
    await _submit(aredis_client, keys)
    token = await aredis_client.lindex(wake_key(key_prefix), 0)
    await aredis_client.rpush(wake_key(key_prefix), token)  # a duplicate token
    _, first = await _take(aredis_client, key_prefix, worker="w1")
    _, second = await _take(aredis_client, key_prefix, worker="w2")
    assert len(first) == 5 and second == []
    assert (await aredis_client.hget(keys.meta, "worker")) == b"w1"


async def test_a_token_without_the_job_keys_claims_but_leaves_start_to_the_job(
    aredis_client, key_prefix
):
    keys = JobKeys(key_prefix, "job-c")
    await _submit(aredis_client, keys, with_queue=False)  # the split layout's token
    moved, claimed = await _take(aredis_client, key_prefix, with_start=False)
    assert moved == keys.arq_job_id.encode()
    assert claimed[2] == b"unstarted"
    assert await aredis_client.hget(keys.meta, "status") == b"queued"
    assert await aredis_client.exists(keys.lease) == 0


async def test_with_start_off_the_token_keys_are_ignored(aredis_client, key_prefix):
    keys = JobKeys(key_prefix, "job-d")
    await _submit(aredis_client, keys)
    _, claimed = await _take(aredis_client, key_prefix, with_start=False)
    assert claimed[2] == b"unstarted"
    assert await aredis_client.hget(keys.meta, "status") == b"queued"


async def test_an_idle_wake_up_times_out_with_nothing_claimed(aredis_client, key_prefix):
    moved, claimed = await _take(aredis_client, key_prefix)
    assert moved is None and claimed == []


async def test_a_token_whose_job_left_the_queue_is_dropped(aredis_client, key_prefix):
    keys = JobKeys(key_prefix, "job-e")
    await _submit(aredis_client, keys)
    await aredis_client.zrem(keys.queue, keys.arq_job_id)  # e.g. cancelled, or polled by arq
    moved, claimed = await _take(aredis_client, key_prefix)
    assert moved is not None and claimed == []
    assert await aredis_client.exists(keys.arq_in_progress) == 0


@pytest.mark.parametrize("free", [1, 3])
async def test_leftover_tokens_are_taken_up_to_the_free_slots(aredis_client, key_prefix, free):
    jobs = [JobKeys(key_prefix, f"job-f{i}") for i in range(3)]
    for keys in jobs:
        await _submit(aredis_client, keys)
    # two tokens already moved by a worker gone between its BLMOVE and its TAKE
    for _ in range(2):
        await aredis_client.lmove(wake_key(key_prefix), taken_key(key_prefix), "LEFT", "RIGHT")
    _, claimed = await _take(aredis_client, key_prefix, free=free)  # moves the third
    assert len(claimed) == 5 * free
    left = await aredis_client.llen(taken_key(key_prefix))
    assert left == 3 - free
    if left:  # what is left expires with the list, should nobody take it
        assert 0 < await aredis_client.pttl(taken_key(key_prefix)) <= 60_000
