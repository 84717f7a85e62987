"""The client's no-I/O core, driven through a fake transport (no server), as httpx tests its
clients with a mock transport: the same `follow` / `afollow` the real twins run."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag.exceptions import JobNotFound
from streaming_rag.stats import StreamStats
from streaming_rag.wire import JobKeys, encode_event
from streaming_rag_client._core import (
    READ_COUNT,
    REPLAY_COUNT,
    Follower,
    afollow,
    cancel_succeeded,
    flatten,
    follow,
)

KEYS = JobKeys("core-test", "job1")
BLOCK_MS = 250


class FakeStream:
    """An in-memory job stream plus a scripted sequence of CHECK verdicts. Every call is
    logged as ("read", cursor, block_ms) or ("check",)."""

    def __init__(self, verdicts: list[str] | None = None) -> None:
        self.entries: list[tuple[bytes, list[bytes]]] = []
        self.verdicts = list(verdicts or [])
        self.calls: list[tuple[Any, ...]] = []
        self.counts: list[int] = []  # the COUNT of each read
        self.on_check: dict[str, list[tuple[EventType, Any]]] = {}

    def add(self, type_: EventType, data: Any, latency: float = 0.1) -> str:
        entry_id = f"{1000 + len(self.entries)}-0"
        self.entries.append((entry_id.encode(), [b"e", encode_event(type_, data, latency)]))
        return entry_id

    def _after(self, cursor: str) -> list[tuple[bytes, list[bytes]]]:
        ms, _, seq = cursor.partition("-")
        key = (int(ms), int(seq or 0))
        out = []
        for entry_id, fields in self.entries:
            e_ms, _, e_seq = entry_id.decode().partition("-")
            if (int(e_ms), int(e_seq)) > key:
                out.append((entry_id, fields))
        return out

    def read(self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = 1000) -> Any:
        self.calls.append(("read", cursor, block_ms))
        self.counts.append(count)
        entries = self._after(cursor)[:count]
        return [[keys.events.encode(), entries]] if entries else None

    def check(self, keys: JobKeys) -> str:
        self.calls.append(("check",))
        if not self.verdicts:
            raise AssertionError("the follower asked for one CHECK more than scripted")
        verdict = self.verdicts.pop(0)
        for type_, data in self.on_check.pop(verdict, []):
            self.add(type_, data)  # what the CHECK script appends (worker lost, withdrawn)
        return verdict


class AsyncFakeStream:
    def __init__(self, fake: FakeStream) -> None:
        self.fake = fake

    async def read(
        self, keys: JobKeys, cursor: str, block_ms: int | None, count: int = 1000
    ) -> Any:
        return self.fake.read(keys, cursor, block_ms, count)

    async def check(self, keys: JobKeys) -> str:
        return self.fake.check(keys)


def run(fake: FakeStream, cursor: str = "0-0") -> tuple[list[StreamEvent], StreamStats]:
    stats = StreamStats()
    return list(follow(fake, Follower(KEYS, cursor=cursor), block_ms=BLOCK_MS, stats=stats)), stats


def answer(fake: FakeStream, text: str = "ab") -> list[str]:
    ids = [fake.add(EventType.RETRIEVAL_START, {"query": "q"})]
    ids += [fake.add(EventType.CHUNK, ch) for ch in text]
    ids.append(fake.add(EventType.GENERATION_DONE, {"total_latency": 0.5}))
    return ids


def test_a_finished_stream_is_read_once_and_ends_at_its_terminal_event() -> None:
    fake = FakeStream()
    ids = answer(fake)
    events, stats = run(fake)
    assert [e.id for e in events] == ids
    assert fake.calls == [("read", "0-0", BLOCK_MS)]  # no CHECK needed, nothing after DONE
    assert stats.snapshot() == {
        "total_streams": 1,
        "total_chunks": 2,
        "total_errors": 0,
        "avg_stream_latency_s": 0.5,
    }


def test_a_full_page_makes_the_next_read_ask_for_a_bigger_one() -> None:
    fake = FakeStream()
    ids = answer(fake, "x" * (READ_COUNT + REPLAY_COUNT))  # needs three reads (2 + chunks)
    events, stats = run(fake)
    assert [e.id for e in events] == ids
    assert fake.counts == [READ_COUNT, REPLAY_COUNT, REPLAY_COUNT]
    assert len(fake.calls) == 1 + -(-(len(ids) - READ_COUNT) // REPLAY_COUNT)
    assert stats.snapshot()["total_chunks"] == READ_COUNT + REPLAY_COUNT
    short = FakeStream()
    answer(short, "ab")
    run(short)
    assert short.counts == [READ_COUNT]  # a short page: nothing more to catch up on


def test_closing_the_flattened_events_closes_the_page_reader() -> None:
    closed: list[bool] = []
    page = [StreamEvent(EventType.CHUNK, "a", 0.0), StreamEvent(EventType.CHUNK, "b", 0.1)]

    def pages() -> Generator[list[StreamEvent], None, None]:
        try:
            yield page
            yield page
        finally:
            closed.append(True)

    it = flatten(pages())
    assert [next(it), next(it), next(it)] == [*page, page[0]]
    assert not closed
    it.close()
    assert closed == [True]  # e.g. the watcher's "stopped" WATCH runs at once


def test_resuming_after_a_cursor_yields_only_what_follows() -> None:
    fake = FakeStream()
    ids = answer(fake, "abcd")
    events, _ = run(fake, cursor=ids[2])
    assert [e.id for e in events] == ids[3:]
    assert "".join(str(e) for e in events) == "cd"


def test_an_idle_stream_asks_check_and_waits_while_the_job_runs() -> None:
    fake = FakeStream(verdicts=["running", "running"])
    fake.add(EventType.RETRIEVAL_START, {"query": "q"})
    stats = StreamStats()
    it = follow(fake, Follower(KEYS), block_ms=BLOCK_MS, stats=stats)
    assert next(it).type is EventType.RETRIEVAL_START
    fake.calls.clear()
    # the next event arrives only after two idle reads, each followed by a CHECK
    original = fake.check

    def check_then_publish(keys: JobKeys) -> str:
        verdict = original(keys)
        if not fake.verdicts:
            fake.add(EventType.GENERATION_DONE, {"total_latency": 1.0})
        return verdict

    fake.check = check_then_publish  # type: ignore[method-assign]
    assert next(it).type is EventType.GENERATION_DONE
    assert fake.calls[:4] == [
        ("read", "1000-0", BLOCK_MS),
        ("check",),
        ("read", "1000-0", BLOCK_MS),
        ("check",),
    ]
    with pytest.raises(StopIteration):
        next(it)


def test_a_lost_worker_ends_with_the_error_check_appended() -> None:
    fake = FakeStream(verdicts=["lost"])
    fake.add(EventType.RETRIEVAL_START, {"query": "q"})
    fake.on_check["lost"] = [(EventType.ERROR, {"msg": "Worker lost", "stage": "worker"})]
    events, stats = run(fake)
    assert events[-1].type is EventType.ERROR
    assert events[-1].data == {"msg": "Worker lost", "stage": "worker"}
    assert stats.snapshot()["total_errors"] == 1


def test_a_job_that_ended_at_the_cursor_ends_after_one_non_blocking_read() -> None:
    fake = FakeStream(verdicts=["done", "done"])
    ids = answer(fake)
    events, _ = run(fake, cursor=ids[-1])
    assert events == []
    # blocking read, CHECK says final, one more read that must not block, CHECK ends it
    assert fake.calls == [
        ("read", ids[-1], BLOCK_MS),
        ("check",),
        ("read", ids[-1], None),
        ("check",),
    ]


def test_a_missing_job_raises_job_not_found() -> None:
    fake = FakeStream(verdicts=["missing"])
    with pytest.raises(JobNotFound, match="job1"):
        run(fake)


async def test_the_async_twin_follows_the_same_state_machine() -> None:
    fake = FakeStream(verdicts=["withdrawn"])
    fake.on_check["withdrawn"] = [(EventType.ERROR, {"msg": "no worker", "stage": "queue"})]
    stats = StreamStats()
    follower = Follower(KEYS)
    events = [
        e async for e in afollow(AsyncFakeStream(fake), follower, block_ms=BLOCK_MS, stats=stats)
    ]
    assert [e.type for e in events] == [EventType.ERROR]
    assert follower.done and follower.seen == 1 and follower.cursor == events[0].id
    assert fake.calls == [("read", "0-0", BLOCK_MS), ("check",), ("read", "0-0", BLOCK_MS)]


def test_follower_advance_and_settle() -> None:
    f = Follower(KEYS)
    f.advance(StreamEvent(EventType.CHUNK, "x", 0.1, "5-1"))
    assert (f.cursor, f.seen, f.done) == ("5-1", 1, False)
    f.settle()
    assert not f.done  # no final status seen yet: settling changes nothing
    assert f.on_idle("failed") is True and not f.may_block
    f.settle()
    assert f.done


@pytest.mark.parametrize(
    ("verdict", "retried", "succeeded"),
    [
        ("withdrawn", False, True),
        ("requested", False, True),
        ("cancelled", False, False),  # someone else had cancelled it
        ("cancelled", True, True),  # our first attempt did, its reply was lost
        ("done", True, False),
        ("failed", False, False),
    ],
)
def test_cancel_succeeded(verdict: str, retried: bool, succeeded: bool) -> None:
    assert cancel_succeeded(verdict, retried=retried) is succeeded
