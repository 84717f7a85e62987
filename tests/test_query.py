"""§3.3 query(): {"answer": str, "events": list[StreamEvent]}."""

from __future__ import annotations

from helpers_core import HAPPY, AsyncBackend, AsyncLLM, RetrieveOnly, SyncBackend, SyncLLM, types

from streaming_rag import EventType, StreamConfig, StreamEvent, StreamingRAG


def test_returns_answer_and_events_only() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["RAG ", "helps."]))
    result = rag.query("What are the main benefits of RAG?")
    assert set(result) == {"answer", "events"}
    assert result["answer"] == "RAG helps."
    assert type(result["events"]) is list
    assert all(isinstance(e, StreamEvent) for e in result["events"])
    assert types(result["events"]) == [
        *HAPPY,
        EventType.CHUNK,
        EventType.CHUNK,
        EventType.GENERATION_DONE,
    ]
    assert result["events"][0].data == {"query": "What are the main benefits of RAG?"}


def test_answer_is_concatenation_of_chunk_events() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=SyncLLM(["a", "", "b ", "c"]))
    result = rag.query("q")
    assert result["answer"] == "".join(e.data for e in result["events"] if e.is_chunk) == "ab c"


def test_empty_answer_when_no_chunks() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM([]))
    result = rag.query("q")
    assert result["answer"] == ""
    assert result["events"][-1].type is EventType.GENERATION_DONE


def test_partial_answer_and_error_event_on_generation_failure() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["part", "x"], fail_after=(1, OSError("eof"))))
    result = rag.query("q")
    assert result["answer"] == "part"
    assert result["events"][-1].data == {"msg": "eof", "stage": "generation"}


def test_retrieval_failure_gives_empty_answer() -> None:
    class Broken:
        def retrieve(self, q: str) -> None:
            raise RuntimeError("offline")

    result = StreamingRAG(Broken(), llm=AsyncLLM()).query("q")
    assert result["answer"] == ""
    assert [e.data for e in result["events"]] == [
        {"query": "q"},
        {"msg": "offline", "stage": "retrieval"},
    ]


def test_context_forwarded_to_generate() -> None:
    backend = SyncBackend(answer="with context")
    rag = StreamingRAG(backend, config=StreamConfig(sim_delay=0))
    result = rag.query("q", {"lang": "ar"})
    assert result["answer"] == "with context"
    assert backend.generate_calls == [("q", {"lang": "ar"})]
    rag.query("q2")
    assert backend.generate_calls[-1] == ("q2", {})


def test_total_latency_readable_from_events() -> None:
    rag = StreamingRAG(AsyncBackend(), llm=AsyncLLM())
    result = rag.query("q")
    (done,) = [e for e in result["events"] if e.type == EventType.GENERATION_DONE]
    assert done.data["total_latency"] == done.latency
    assert done.data["total_latency"] >= result["events"][-2].latency


def test_query_counts_one_stream() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=AsyncLLM(["a", "b"]))
    rag.query("q")
    assert rag.stats["total_streams"] == 1
    assert rag.stats["total_chunks"] == 2
