"""The fan-out's shared log: subscribers at any cursor get every event exactly once, in order;
a subscriber that stops reading falls off the log (bounded) without stalling the others and
still gets everything; one subscriber's cancellation does not disturb the others waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from streaming_rag import StreamEvent
from streaming_rag_client import StreamingRAGClient
from streaming_rag_client._fanout_state import _Subscriber
from streaming_rag_client._transport import READ_COUNT
from tests.helpers_queue import running_worker
from tests.queue_apps import make_rag

WAIT_S = 30.0


class SteppedLLM:
    """Yields `w<i>` tokens as the test releases them (`release(n)`), ends on `finish()`."""

    def __init__(self) -> None:
        self.steps: asyncio.Queue[int | None] = asyncio.Queue()
        self.produced = 0

    def release(self, n: int) -> None:
        self.steps.put_nowait(n)

    def finish(self) -> None:
        self.steps.put_nowait(None)

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        while (n := await self.steps.get()) is not None:
            for _ in range(n):
                yield f"w{self.produced} "
                self.produced += 1


def spy_joins(rag: StreamingRAGClient) -> dict[Any, _Subscriber]:
    """The subscriber the client's fan-out adds from now on, by the task that joined."""
    fanout = rag._fanout
    assert fanout is not None
    joined: dict[Any, _Subscriber] = {}
    join = fanout._join

    def spy(keys: Any, cursor: str) -> tuple[_Subscriber, str]:
        sub, ahead = join(keys, cursor)
        joined[asyncio.current_task()] = sub
        return sub, ahead

    fanout._join = spy  # type: ignore[method-assign]
    return joined


class Recorder:
    """Collects one subscriber's events; `until(pred)` waits (bounded) for one matching."""

    def __init__(self, rag: StreamingRAGClient, job_id: str, after: str | None = None) -> None:
        self.events: list[StreamEvent] = []
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._run(rag, job_id, after))

    async def _run(self, rag: StreamingRAGClient, job_id: str, after: str | None) -> None:
        async for event in rag.aevents(job_id, after=after):
            self.events.append(event)
            async with self._changed:
                self._changed.notify_all()

    async def until_chunk(self, data: str) -> None:
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(
                lambda: any(e.data == data for e in self.events if e.is_chunk)
            )


def ids(events: list[StreamEvent]) -> list[str | None]:
    return [e.id for e in events]


async def test_subscribers_at_different_cursors_joining_mid_stream_get_each_event_once(
    redis_url, key_prefix
):
    llm = SteppedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm)):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=5)
        try:
            job_id = await rag.asubmit("many cursors")
            reference = Recorder(rag, job_id)
            late: list[tuple[int, Recorder]] = []  # (how many reference events it skipped)
            for step in range(5):
                llm.release(7)
                await reference.until_chunk(f"w{7 * step + 6} ")
                seen = list(reference.events)
                # from the start, from the reader's position, and from three points behind it
                for k in (0, len(seen), len(seen) - 1, len(seen) // 2, max(0, len(seen) - 8)):
                    after = None if k == 0 else seen[k - 1].id
                    late.append((k, Recorder(rag, job_id, after)))
            llm.release(30)
            llm.finish()
            await asyncio.wait_for(
                asyncio.gather(reference.task, *(r.task for _, r in late)), WAIT_S
            )
        finally:
            await rag.aclose()
    trace = reference.events
    assert len(trace) == 3 + 5 * 7 + 30 + 1 and trace[-1].is_terminal
    for k, recorder in late:
        assert ids(recorder.events) == ids(trace[k:])


async def test_a_subscriber_that_stops_reading_falls_off_without_stalling_the_others(
    redis_url, key_prefix
):
    llm = SteppedLLM()
    buffer = 5
    async with running_worker(redis_url, key_prefix, make_rag(llm)):
        rag = StreamingRAGClient(
            redis_url, prefix=key_prefix, poll_interval_s=5, fanout_buffer=buffer
        )
        try:
            job_id = await rag.asubmit("one slow reader")
            joined = spy_joins(rag)  # the fan-out exists once the client was used
            parked, resume = asyncio.Event(), asyncio.Event()
            slow_events: list[StreamEvent] = []

            async def slow() -> None:
                async for event in rag.aevents(job_id):
                    slow_events.append(event)
                    if event.data == "w0 ":  # a live event from the log: stop reading
                        parked.set()
                        await resume.wait()

            slow_task = asyncio.create_task(slow())
            fast = Recorder(rag, job_id)
            llm.release(1)
            await asyncio.wait_for(parked.wait(), WAIT_S)
            await fast.until_chunk("w0 ")
            slow_sub = joined[slow_task]
            watched = slow_sub.watched
            longest = 0
            for n in range(1, 61):  # one token at a time: each is a batch in the log
                llm.release(1)
                await fast.until_chunk(f"w{n} ")
                longest = max(longest, len(watched.log))
            llm.finish()
            await asyncio.wait_for(fast.task, WAIT_S)  # not stalled by the parked one
            assert slow_sub.pos < watched.base  # it fell off the log
            assert longest <= buffer + READ_COUNT  # and the log stayed bounded
            resume.set()
            await asyncio.wait_for(slow_task, WAIT_S)
        finally:
            await rag.aclose()
    assert len(fast.events) == 3 + 61 + 1
    assert ids(slow_events) == ids(fast.events)


async def test_one_subscriber_cancelled_while_waiting_does_not_disturb_the_others(
    redis_url, key_prefix
):
    llm = SteppedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm)):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=5)
        try:
            job_id = await rag.asubmit("cancel one")
            recorders = [Recorder(rag, job_id) for _ in range(3)]
            llm.release(1)
            for r in recorders:  # each now waits on the stream's shared future
                await r.until_chunk("w0 ")
            recorders[0].task.cancel()
            llm.release(5)
            llm.finish()
            await asyncio.wait_for(asyncio.gather(*(r.task for r in recorders[1:])), WAIT_S)
            assert recorders[0].task.cancelled()
        finally:
            await rag.aclose()
    for r in recorders[1:]:
        assert [e.data for e in r.events if e.is_chunk] == [f"w{i} " for i in range(6)]
        assert r.events[-1].is_terminal
