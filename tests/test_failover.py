"""A Sentinel failover in the middle of a 300-token answer loses nothing: a real primary, replica
and sentinel (embedded Valkeys of this module), a real worker and real subscribers on the
Sentinel URL; afterwards every subscriber's events equal a replay, entry id for entry id.

Both failovers are tried: Valkey's coordinated one (the old primary is demoted first), and the
plain ``SENTINEL FAILOVER``, which leaves the old primary writable until the sentinel turns it
into a replica: what the worker wrote there meanwhile (and subscribers read there) is dropped by
the resync, and the worker re-appends it with the original ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from streaming_rag import EventType, StreamConfig, StreamEvent, StreamingRAG
from streaming_rag.wire.ids import parse_entry_id
from streaming_rag_client import StreamingRAGClient
from tests.helpers_queue import running_worker
from tests.queue_apps import Backend
from tests.test_sentinel import SERVICE, Deployment, admin, deployment, wait_until

pytestmark = pytest.mark.single_server

__all__ = ["deployment"]  # the module-scoped fixture, imported for this module

TOKENS = 300
WAIT_S = 60.0


class PacedLLM:
    """300 tokens, 2 ms apart; after `first` of them it sets `reached` and waits for `go`."""

    def __init__(self, first: int) -> None:
        self.first = first
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for i in range(TOKENS):
            if i == self.first:
                self.reached.set()
                await self.go.wait()
            yield f"t{i} "
            await asyncio.sleep(0.002)  # the pacing of a real model, not synchronisation


def start_failover(found: Deployment, coordinated: bool) -> int:
    """Ask the sentinel to fail over; returns the port that must become the primary."""
    old = found.primary_port()
    new = found.replica if old == found.primary.port else found.primary
    wait_until(found.replica_ready, "a healthy replica to promote")
    args = ["SENTINEL", "FAILOVER", SERVICE] + (["COORDINATED"] if coordinated else [])
    with admin(found.sentinel) as s:
        assert s.execute_command(*args) in ("OK", True)
    return new.port


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]


@pytest.mark.parametrize("coordinated", [True, False], ids=["coordinated", "plain"])
async def test_a_failover_mid_answer_loses_nothing_and_replays_what_subscribers_saw(
    deployment: Deployment, key_prefix: str, coordinated: bool
) -> None:
    url = deployment.url
    llm = PacedLLM(first=100)
    rag = StreamingRAG(Backend(), llm, StreamConfig(generation_timeout=300))
    shared = StreamingRAGClient(url, prefix=key_prefix, start_timeout=WAIT_S)
    alone = StreamingRAGClient(url, prefix=key_prefix, start_timeout=WAIT_S, fanout=False)
    # a plain failover leaves the new primary's copy of the job stale until the sentinel
    # demotes the old one (seconds): the lease must outlast that window (docs/operations.md)
    lease_s = 3.0 if coordinated else 30.0
    async with running_worker(url, key_prefix, rag, lease_s=lease_s):
        job_id = await shared.asubmit("a long answer")
        subscribers = [
            asyncio.create_task(collect(shared.aevents(job_id))),
            asyncio.create_task(collect(shared.aevents(job_id))),
            asyncio.create_task(collect(alone.aevents(job_id))),
        ]
        await asyncio.wait_for(llm.reached.wait(), WAIT_S)
        new_port = await asyncio.to_thread(start_failover, deployment, coordinated)
        llm.go.set()  # the rest of the answer is written while the failover goes on
        seen = await asyncio.wait_for(asyncio.gather(*subscribers), WAIT_S)
        await asyncio.to_thread(
            wait_until, lambda: deployment.primary_port() == new_port, "the new primary"
        )
        # a new client's first contact fails at once by design: wait until the sentinel
        # hands a fresh client the new primary (its state settles a moment after the switch)
        await asyncio.to_thread(wait_until, lambda: _reachable(url), "the primary via sentinel")
        async with StreamingRAGClient(url, prefix=key_prefix) as later:
            replay = await asyncio.wait_for(collect(later.aevents(job_id)), WAIT_S)
    await shared.aclose()
    await alone.aclose()
    chunks = [e.data for e in replay if e.type is EventType.CHUNK]
    assert chunks == [f"t{i} " for i in range(TOKENS)]
    assert replay[-1].type is EventType.GENERATION_DONE
    assert [e.is_terminal for e in replay].count(True) == 1
    ids = [parse_entry_id(e.id or "") for e in replay]
    assert ids == sorted(set(ids))
    for events in seen:
        assert [(e.id, e.type, e.data) for e in events] == [(e.id, e.type, e.data) for e in replay]


def _reachable(url: str) -> bool:
    """Whether a fresh client reaches the primary the sentinel names now."""
    from streaming_rag.wire import parse_url
    from streaming_rag_client._connect import sync_client

    client = sync_client(parse_url(url))
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()
