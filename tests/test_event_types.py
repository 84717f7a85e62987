"""§5 EventType: a str enum with the spec's six values, and each value's payload shape."""

from __future__ import annotations

from enum import Enum

from helpers_core import AsyncLLM, RetrieveOnly, acollect

from streaming_rag import EventType, StreamConfig, StreamingRAG

SPEC_VALUES = {
    "RETRIEVAL_START": "retrieval_start",
    "RETRIEVAL_DONE": "retrieval_done",
    "GENERATION_START": "generation_start",
    "CHUNK": "chunk",
    "GENERATION_DONE": "generation_done",
    "ERROR": "error",
}


def test_exactly_the_six_spec_members() -> None:
    assert {m.name: m.value for m in EventType} == SPEC_VALUES


def test_is_a_str_enum_comparable_to_literals() -> None:
    assert issubclass(EventType, str)
    assert issubclass(EventType, Enum)
    for name, value in SPEC_VALUES.items():
        member = EventType[name]
        assert member == value
        assert isinstance(member, str)
        assert EventType(value) is member
    assert EventType.CHUNK != "CHUNK"


def test_members_usable_in_match_statement() -> None:
    def kind(t: EventType) -> str:
        match t:
            case EventType.CHUNK:
                return "text"
            case EventType.ERROR:
                return "err"
            case _:
                return "meta"

    assert [kind(t) for t in EventType] == ["meta", "meta", "meta", "text", "meta", "err"]


async def test_payload_shapes_on_success() -> None:
    rag = StreamingRAG(RetrieveOnly(["a", {"content": "b", "k": 1}]), llm=AsyncLLM(["x", "y"]))
    events = await acollect(rag.astream_events("the query"))
    by_type: dict[EventType, list] = {}
    for e in events:
        by_type.setdefault(e.type, []).append(e.data)
    assert by_type[EventType.RETRIEVAL_START] == [{"query": "the query"}]
    (done,) = by_type[EventType.RETRIEVAL_DONE]
    assert set(done) == {"num_docs", "docs"}
    assert done == {"num_docs": 2, "docs": [{"content": "a"}, {"content": "b", "k": 1}]}
    (start,) = by_type[EventType.GENERATION_START]
    assert set(start) == {"prompt_chars"}
    assert type(start["prompt_chars"]) is int
    assert by_type[EventType.CHUNK] == ["x", "y"]
    (gen_done,) = by_type[EventType.GENERATION_DONE]
    assert set(gen_done) == {"total_latency"}
    assert type(gen_done["total_latency"]) is float
    assert EventType.ERROR not in by_type


async def test_error_payload_shape() -> None:
    class Broken:
        async def retrieve(self, query: str) -> None:
            raise RuntimeError("index offline")

    rag = StreamingRAG(Broken(), llm=AsyncLLM(), config=StreamConfig())
    events = await acollect(rag.astream_events("q"))
    assert events[-1].type is EventType.ERROR
    assert events[-1].data == {"msg": "index offline", "stage": "retrieval"}
    assert all(type(v) is str for v in events[-1].data.values())
