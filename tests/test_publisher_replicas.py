"""A job's end counts once a replica has it: with a replica attached, the terminal batch is
followed by WAIT; a replica that stops acknowledging keeps the end pending (rewritten,
idempotently) until `replica_ack_window_s`, then it counts with a warning. Real servers: a
primary and its replica, the replica killed for real."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from streaming_rag import EventType
from streaming_rag.wire import JobKeys, encode_event
from streaming_rag.wire.scripts import START, start_call
from streaming_rag_cli.embedded import EmbeddedValkey
from streaming_rag_worker.publisher import Publisher
from tests.helpers_queue import wait_until

pytestmark = pytest.mark.single_server

WAIT_S = 30.0


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[EmbeddedValkey, EmbeddedValkey]]:
    with EmbeddedValkey() as primary:
        replica = EmbeddedValkey(config={"replicaof": f"127.0.0.1 {primary.port}"}).start()
        try:

            def linked() -> bool:
                with redis.Redis(host="127.0.0.1", port=replica.port) as r:
                    return bool(r.info("replication").get("master_link_status") == "up")

            wait_until(linked, "the replica to sync", WAIT_S)
            yield primary, replica
        finally:
            replica.stop()


async def started_job(r: Any, prefix: str, job_id: str) -> JobKeys:
    keys = JobKeys(prefix, job_id)
    await r.hset(keys.meta, mapping={"status": "queued"})
    call = start_call(keys, lease_ms=30_000, worker="w")
    assert await r.eval(START, len(call.keys), *call.keys, *call.args) == b"ok"
    return keys


def done() -> bytes:
    return encode_event(EventType.GENERATION_DONE, {"total_latency": 0.1}, 0.1)


async def test_a_job_end_waits_for_a_replica_then_counts_after_the_window(
    primary_and_replica: tuple[EmbeddedValkey, EmbeddedValkey],
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, replica = primary_and_replica
    r = redis.asyncio.Redis.from_url(primary.url)
    publisher = Publisher(
        r, lease_ms=30_000, retention_ms=60_000, replica_ack_timeout_ms=50, replica_ack_window_s=1.0
    )
    publisher.start()
    try:
        # with the replica up, an end is acknowledged at once
        first = await started_job(r, key_prefix, "acked")
        await publisher.publish(first, encode_event(EventType.CHUNK, "x", 0.0))
        assert await asyncio.wait_for(publisher.finish(first, done(), "done"), WAIT_S)
        assert await r.hget(first.meta, "status") == b"done"

        # the replica dies: the next end is written but no replica acknowledges it
        await asyncio.to_thread(replica.kill)
        second = await started_job(r, key_prefix, "unacked")
        caplog.set_level(logging.WARNING, logger="streaming_rag.worker")
        assert await asyncio.wait_for(publisher.finish(second, done(), "done"), WAIT_S)
        assert await r.hget(second.meta, "status") == b"done"
        assert await r.xlen(second.events) == 1  # rewritten while waiting, never duplicated
        # counted only once the window ran out: the warning says so
        warnings = [m for m in caplog.messages if "without a replica acknowledging" in m]
        assert warnings and "unacked" in warnings[0]
    finally:
        await publisher.aclose()
        await r.aclose()
