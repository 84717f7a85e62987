"""§3.1 callbacks: on_chunk before each CHUNK, on_event before every yield, exceptions propagate."""

from __future__ import annotations

from contextlib import aclosing

import pytest
from helpers_core import AsyncLLM, RetrieveOnly, SyncBackend, SyncLLM, acollect

from streaming_rag import EventType, StreamConfig, StreamEvent, StreamingRAG

T = EventType


class Boom(Exception):
    pass


def recording_rag(trace: list, **kw) -> StreamingRAG:
    return StreamingRAG(
        RetrieveOnly(),
        llm=kw.pop("llm", AsyncLLM(["a", "b"])),
        on_chunk=lambda c: trace.append(("on_chunk", c)),
        on_event=lambda e: trace.append(("on_event", e.type)),
        **kw,
    )


EXPECTED = [
    ("on_event", T.RETRIEVAL_START),
    ("consumer", T.RETRIEVAL_START),
    ("on_event", T.RETRIEVAL_DONE),
    ("consumer", T.RETRIEVAL_DONE),
    ("on_event", T.GENERATION_START),
    ("consumer", T.GENERATION_START),
    ("on_chunk", "a"),
    ("on_event", T.CHUNK),
    ("consumer", T.CHUNK),
    ("on_chunk", "b"),
    ("on_event", T.CHUNK),
    ("consumer", T.CHUNK),
    ("on_event", T.GENERATION_DONE),
    ("consumer", T.GENERATION_DONE),
]


async def test_order_on_async_surface() -> None:
    trace: list = []
    rag = recording_rag(trace)
    async for event in rag.astream_events("q"):
        trace.append(("consumer", event.type))
    assert trace == EXPECTED


async def test_order_with_sync_llm() -> None:
    trace: list = []
    rag = recording_rag(trace, llm=SyncLLM(["a", "b"]))
    async for event in rag.astream_events("q"):
        trace.append(("consumer", event.type))
    assert trace == EXPECTED


async def test_on_event_receives_the_yielded_objects() -> None:
    seen: list[StreamEvent] = []
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["x"]), on_event=seen.append)
    events = await acollect(rag.astream_events("q"))
    assert len(seen) == len(events) == 5
    assert all(a is b for a, b in zip(seen, events, strict=True))


def test_sync_surface_callbacks_fire_before_the_consumer_sees_each_event() -> None:
    seen: list[StreamEvent] = []
    chunk_log: list[str] = []
    rag = StreamingRAG(
        RetrieveOnly(),
        llm=AsyncLLM(["a", "b", "c"]),
        on_event=seen.append,
        on_chunk=chunk_log.append,
    )
    count = 0
    for event in rag.stream_events("q"):
        assert any(s is event for s in seen)  # on_event already ran for this very event
        if event.is_chunk:
            assert event.data in chunk_log
        count += 1
    assert count == len(seen) == 7
    assert chunk_log == ["a", "b", "c"]


def test_callbacks_fire_for_every_event_on_stream_and_query() -> None:
    for method in ("stream", "query"):
        seen: list[EventType] = []
        chunk_log: list[str] = []
        rag = StreamingRAG(
            SyncBackend(answer="one two three"),
            config=StreamConfig(chunk_size=1, sim_delay=0),
            on_event=lambda e, seen=seen: seen.append(e.type),
            on_chunk=chunk_log.append,
        )
        out = getattr(rag, method)("q")
        if method == "stream":
            out = list(out)
        assert seen == [
            T.RETRIEVAL_START,
            T.RETRIEVAL_DONE,
            T.GENERATION_START,
            T.CHUNK,
            T.CHUNK,
            T.CHUNK,
            T.GENERATION_DONE,
        ]
        assert chunk_log == ["one ", "two ", "three"]


async def test_callbacks_fire_on_astream() -> None:
    seen: list[EventType] = []
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a"]), on_event=lambda e: seen.append(e.type))
    assert await acollect(rag.astream("q")) == ["a"]
    assert seen == [
        T.RETRIEVAL_START,
        T.RETRIEVAL_DONE,
        T.GENERATION_START,
        T.CHUNK,
        T.GENERATION_DONE,
    ]


async def test_on_event_fires_for_error_events() -> None:
    seen: list[StreamEvent] = []

    class Broken:
        async def retrieve(self, q: str) -> None:
            raise RuntimeError("down")

    rag = StreamingRAG(Broken(), llm=AsyncLLM(), on_event=seen.append)
    await acollect(rag.astream_events("q"))
    assert [e.type for e in seen] == [T.RETRIEVAL_START, T.ERROR]
    assert seen[-1].data == {"msg": "down", "stage": "retrieval"}


# -- raising callbacks ----------------------------------------------------------------------
async def test_raising_on_chunk_propagates_and_is_not_an_error_event() -> None:
    seen: list[StreamEvent] = []
    llm = AsyncLLM(["a", "b"])

    def on_chunk(text: str) -> None:
        raise Boom(text)

    rag = StreamingRAG(RetrieveOnly(), llm=llm, on_chunk=on_chunk, on_event=seen.append)
    got: list[StreamEvent] = []
    with pytest.raises(Boom, match=r"^a$"):
        async with aclosing(rag.astream_events("q")) as events:
            async for event in events:
                got.append(event)
    assert [e.type for e in got] == [T.RETRIEVAL_START, T.RETRIEVAL_DONE, T.GENERATION_START]
    assert T.ERROR not in [e.type for e in seen]
    assert T.CHUNK not in [e.type for e in seen]  # on_chunk runs before the CHUNK event
    assert rag.stats["total_errors"] == 0
    assert llm.closed.is_set()


@pytest.mark.parametrize(
    "fail_on", [T.RETRIEVAL_START, T.GENERATION_START, T.CHUNK, T.GENERATION_DONE]
)
async def test_raising_on_event_propagates(fail_on: EventType) -> None:
    def on_event(event: StreamEvent) -> None:
        if event.type is fail_on:
            raise Boom(event.type.value)

    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a"]), on_event=on_event)
    got: list[EventType] = []
    with pytest.raises(Boom, match=fail_on.value):
        async with aclosing(rag.astream_events("q")) as events:
            async for event in events:
                got.append(event.type)
    assert fail_on not in got  # on_event runs before the yield
    assert T.ERROR not in got
    assert rag.stats["total_errors"] == 0


def test_raising_on_event_for_error_event_propagates() -> None:
    class Broken:
        async def retrieve(self, q: str) -> None:
            raise RuntimeError("down")

    def on_event(event: StreamEvent) -> None:
        if event.type is T.ERROR:
            raise Boom("in error hook")

    rag = StreamingRAG(Broken(), llm=AsyncLLM(), on_event=on_event)
    with pytest.raises(Boom, match="in error hook"):
        rag.query("q")


@pytest.mark.parametrize("surface", ["stream", "stream_events", "query"])
def test_raising_callback_propagates_through_sync_surfaces(surface: str) -> None:
    raised: list[Boom] = []

    def on_chunk(text: str) -> None:
        exc = Boom("sync " + text)
        raised.append(exc)
        raise exc

    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a"]), on_chunk=on_chunk)
    with pytest.raises(Boom) as info:
        result = getattr(rag, surface)("q")
        if surface != "query":
            list(result)
    assert info.value is raised[0]
    assert rag.stats["total_errors"] == 0


async def test_raising_callback_in_simulation_propagates() -> None:
    def on_chunk(text: str) -> None:
        raise KeyError("cb")

    rag = StreamingRAG(
        SyncBackend(answer="a b"), config=StreamConfig(sim_delay=0), on_chunk=on_chunk
    )
    with pytest.raises(KeyError):
        await acollect(rag.astream_events("q"))
