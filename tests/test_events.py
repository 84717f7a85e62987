"""§4 StreamEvent (frozen, latency, is_chunk, str) and §8 the event stream lifecycle."""

from __future__ import annotations

import dataclasses

import pytest
from helpers_core import HAPPY, AsyncLLM, FakeClock, RetrieveOnly, SyncBackend, acollect, types

import streaming_rag._pipeline as pipeline
from streaming_rag import EventType, StreamConfig, StreamEvent, StreamingRAG


def test_fields() -> None:
    names = [f.name for f in dataclasses.fields(StreamEvent)]
    assert names == ["type", "data", "latency", "id"]
    ev = StreamEvent(EventType.CHUNK, "hi", 0.5)
    assert ev.id is None
    assert StreamEvent(EventType.CHUNK, "hi", 0.5, "1-0").id == "1-0"
    assert StreamEvent(EventType.CHUNK, "hi", 0.5, id="7-1").id == "7-1"


@pytest.mark.parametrize("field", ["type", "data", "latency", "id"])
def test_frozen(field: str) -> None:
    ev = StreamEvent(EventType.CHUNK, "hi", 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(ev, field, None)
    assert (ev.type, ev.data, ev.latency, ev.id) == (EventType.CHUNK, "hi", 0.5, None)


def test_equality_and_hash_by_value() -> None:
    a = StreamEvent(EventType.ERROR, "x", 1.0)
    assert a == StreamEvent(EventType.ERROR, "x", 1.0)
    assert a != StreamEvent(EventType.ERROR, "x", 1.0, "1-0")
    assert hash(a) == hash(StreamEvent(EventType.ERROR, "x", 1.0))


@pytest.mark.parametrize("etype", list(EventType))
def test_is_chunk_only_for_chunk(etype: EventType) -> None:
    data = "text" if etype is EventType.CHUNK else {"k": "v"}
    assert StreamEvent(etype, data, 0.0).is_chunk is (etype is EventType.CHUNK)


@pytest.mark.parametrize("etype", list(EventType))
def test_str_is_chunk_text_or_empty(etype: EventType) -> None:
    data = "some text " if etype is EventType.CHUNK else {"msg": "m", "stage": "retrieval"}
    expected = "some text " if etype is EventType.CHUNK else ""
    assert str(StreamEvent(etype, data, 0.0)) == expected


def test_ultra_compact_consumer_from_spec() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["Sum", "mary", "."]))
    answer = "".join(str(ev) for ev in rag.stream_events("Summarise the context"))
    assert answer == "Summary."


async def test_latency_first_zero_then_monotonic_and_4_decimals() -> None:
    rag = StreamingRAG(
        SyncBackend(answer="a b c d e f"), config=StreamConfig(chunk_size=1, sim_delay=0)
    )
    events = await acollect(rag.astream_events("q"))
    assert events[0].latency == 0.0
    assert type(events[0].latency) is float
    lats = [e.latency for e in events]
    assert lats == sorted(lats)
    assert all(round(x, 4) == x for x in lats)
    assert events[-1].data["total_latency"] >= events[-2].latency


async def test_latency_is_seconds_since_start_rounded_to_4_decimals(monkeypatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(pipeline, "time", clock)

    class Backend:
        async def retrieve(self, query: str) -> list[str]:
            clock.advance(0.123456)
            return ["d"]

    class LLM:
        async def astream(self, prompt: str):
            clock.advance(1.00004)
            yield "a"
            clock.advance(0.00006)
            yield "b"

    rag = StreamingRAG(Backend(), llm=LLM())
    events = await acollect(rag.astream_events("q"))
    assert [e.latency for e in events] == [0.0, 0.1235, 0.1235, 1.1235, 1.1236, 1.1236]
    assert events[-1].data == {"total_latency": 1.1236}


async def test_lifecycle_success_order() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a", "b", "c"]))
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [*HAPPY, *[EventType.CHUNK] * 3, EventType.GENERATION_DONE]
    assert [e.id for e in events] == [None] * 7


async def test_lifecycle_no_chunks_still_done() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM([]))
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [*HAPPY, EventType.GENERATION_DONE]


async def test_lifecycle_retrieval_error() -> None:
    class Broken:
        def retrieve(self, query: str) -> None:
            raise LookupError("nope")

    rag = StreamingRAG(Broken(), llm=AsyncLLM())
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [EventType.RETRIEVAL_START, EventType.ERROR]
    assert events[1].data == {"msg": "nope", "stage": "retrieval"}


async def test_lifecycle_generation_error_after_chunks() -> None:
    llm = AsyncLLM(["a", "b", "c"], fail_after=(2, ValueError("llm broke")))
    rag = StreamingRAG(RetrieveOnly(), llm=llm)
    events = await acollect(rag.astream_events("q"))
    assert types(events) == [*HAPPY, EventType.CHUNK, EventType.CHUNK, EventType.ERROR]
    assert events[-1].data == {"msg": "llm broke", "stage": "generation"}
