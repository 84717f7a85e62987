"""§10 Quick-Start, run as written (with a small `my_rag_system`), output checked against the
spec's comments: repr lines, protocol checks, event order, and the stats it prints.

The example's own `asyncio.sleep(0.02)` in MyAsyncLLM is kept but set to 0 (`LLM_SLEEP`) to
keep the suite fast; everything else is the spec's code, section by section.
"""

from __future__ import annotations

import json
import re

import pytest

from streaming_rag import StreamConfig

LLM_SLEEP = 0.0
DOCS = [
    "RAG retrieves documents and feeds them to an LLM.",
    "Transformers use attention.",
    "BERT is an encoder.",
]
GENERATED = "Simulated answer from the fallback generator mode today."


class MyRagSystem:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def retrieve(self, query: str) -> list[str]:
        self.queries.append(query)
        return DOCS

    def generate(self, query: str, context: dict) -> dict:
        return {"answer": GENERATED}


def run_quickstart(my_rag_system: MyRagSystem) -> dict:
    # --- the spec's §10 code, verbatim apart from the sleep constant -------------------------
    import asyncio
    import json

    from streaming_rag import EventType, StreamConfig, StreamingRAG

    class MyAsyncLLM:
        async def astream(self, prompt: str):
            words = f"Answer based on context: {prompt[:30]}...".split()
            for word in words:
                yield word + " "
                await asyncio.sleep(LLM_SLEEP)

    config = StreamConfig(
        max_context_docs=5,
        max_doc_chars=600,
        retrieval_timeout=10.0,
        generation_timeout=60.0,
    )

    log = []

    def on_chunk(chunk: str):
        log.append(chunk)

    def on_event(event):
        if event.type == EventType.ERROR:
            print(f"[CALLBACK] ❌ Error: {event.data}")

    rag = StreamingRAG(
        rag_system=my_rag_system,
        llm=MyAsyncLLM(),
        config=config,
        on_chunk=on_chunk,
        on_event=on_event,
    )
    print(repr(rag))

    print("Answer: ", end="")
    for chunk in rag.stream("What is retrieval-augmented generation?"):
        print(chunk, end="", flush=True)
    print()

    for event in rag.stream_events("Explain transformer attention"):
        if event.type == EventType.RETRIEVAL_DONE:
            print(f"\n[Docs: {event.data['num_docs']} Latency: {event.latency:.3f}s]")
        elif event.type == EventType.CHUNK:
            print(event.data, end="", flush=True)
        elif event.type == EventType.GENERATION_DONE:
            print(f"\n[Done in {event.data['total_latency']:.2f}s]")
        elif event.type == EventType.ERROR:
            print(f"\n[Error at {event.data['stage']}: {event.data['msg']}]")
            break

    result = rag.query("Summarise the key points about BERT")
    print(result["answer"])
    print(f"Events captured: {len(result['events'])}")

    async def async_text():
        print("Async: ", end="")
        async for chunk in rag.astream("How does vector search work?"):
            print(chunk, end="", flush=True)
        print()

    asyncio.run(async_text())

    async def async_events():
        async for event in rag.astream_events("Describe the RAG pipeline"):
            match event.type:
                case EventType.RETRIEVAL_START:
                    print(f"🔍 Retrieving (t={event.latency:.3f}s)")
                case EventType.RETRIEVAL_DONE:
                    print(f"📄 Retrieved {event.data['num_docs']} docs")
                case EventType.GENERATION_START:
                    print(f"✍️ Generating ({event.data['prompt_chars']} chars)")
                case EventType.CHUNK:
                    print(event.data, end="", flush=True)
                case EventType.GENERATION_DONE:
                    print(f"\n✅ Total: {event.data['total_latency']:.2f}s")
                case EventType.ERROR:
                    print(f"\n❌ [{event.data['stage']}] {event.data['msg']}")

    asyncio.run(async_events())

    print(json.dumps(rag.stats, indent=2))

    from streaming_rag import AsyncStreamableLLM, SyncStreamableLLM

    print(isinstance(MyAsyncLLM(), AsyncStreamableLLM))

    class MySyncLLM:
        def stream(self, prompt: str):
            for word in "Hello world from sync LLM".split():  # noqa: SIM905 (spec code)
                yield word + " "

    print(isinstance(MySyncLLM(), SyncStreamableLLM))

    rag2 = StreamingRAG(
        rag_system=my_rag_system,
        llm=MySyncLLM(),
        chunk_size=5,
    )
    print(repr(rag2))

    rag3 = StreamingRAG(
        rag_system=my_rag_system,
        config=StreamConfig(chunk_size=3, sim_delay=0.05),
    )
    print(repr(rag3))
    for chunk in rag3.stream("Quick question for simulation mode"):
        print(chunk, end="", flush=True)
    print()
    # --- end of the spec's code ------------------------------------------------------------
    return {"log": log, "rag": rag, "rag2": rag2, "rag3": rag3}


@pytest.fixture
def quickstart(capsys: pytest.CaptureFixture[str]) -> tuple[list[str], dict, MyRagSystem]:
    system = MyRagSystem()
    objects = run_quickstart(system)
    out = capsys.readouterr().out
    return out.split("\n"), objects, system


def expected_llm_text() -> str:
    prompt = StreamConfig().prompt_template.format(context="\n\n".join(DOCS), query="x")
    return "".join(w + " " for w in f"Answer based on context: {prompt[:30]}...".split())


def test_repr_lines_match_spec_comments(quickstart) -> None:
    lines, _, _ = quickstart
    assert lines[0] == "StreamingRAG(llm=async, chunk_size=10)"
    assert "StreamingRAG(llm=sync, chunk_size=5)" in lines
    assert "StreamingRAG(llm=sim, chunk_size=3)" in lines
    assert lines.index("StreamingRAG(llm=sync, chunk_size=5)") < lines.index(
        "StreamingRAG(llm=sim, chunk_size=3)"
    )


def test_protocol_checks_print_true(quickstart) -> None:
    lines, _, _ = quickstart
    i = lines.index("StreamingRAG(llm=sync, chunk_size=5)")
    assert lines[i - 2 : i] == ["True", "True"]


def test_plain_text_streams(quickstart) -> None:
    lines, objects, _ = quickstart
    text = expected_llm_text()
    assert text.startswith("Answer based on context: You are a precise RAG")
    assert lines[1] == "Answer: " + text
    assert f"Async: {text}" in lines
    # the query() section prints the answer, then the event count: 3 metadata + chunks + done
    n_chunks = len(text.split())
    i = lines.index(f"Events captured: {n_chunks + 4}")
    assert lines[i - 1] == text
    assert objects["log"] == [w + " " for w in text.split()] * 5  # on_chunk saw 5 streams
    assert not any("[CALLBACK]" in line or "Error" in line for line in lines)


def test_rich_sync_event_section(quickstart) -> None:
    lines, _, _ = quickstart
    out = "\n".join(lines)
    m = re.search(r"\n\[Docs: 3 Latency: \d+\.\d{3}s\]\n(.*)\n\[Done in \d+\.\d{2}s\]\n", out)
    assert m is not None
    assert m.group(1) == expected_llm_text()


def test_async_events_in_lifecycle_order(quickstart) -> None:
    lines, _, _ = quickstart
    i = next(k for k, line in enumerate(lines) if line.startswith("🔍 Retrieving"))
    assert lines[i] == "🔍 Retrieving (t=0.000s)"
    assert lines[i + 1] == "📄 Retrieved 3 docs"
    prompt = StreamConfig().prompt_template.format(
        context="\n\n".join(DOCS), query="Describe the RAG pipeline"
    )
    assert lines[i + 2] == f"✍️ Generating ({len(prompt)} chars)"
    assert lines[i + 3] == expected_llm_text()
    assert re.fullmatch(r"✅ Total: \d+\.\d{2}s", lines[i + 4])


def test_stats_printed_as_json(quickstart) -> None:
    lines, objects, _ = quickstart
    start = lines.index("{")
    end = lines.index("}", start)
    stats = json.loads("\n".join(lines[start : end + 1]))
    n_chunks = len(expected_llm_text().split())
    # the example runs five streams (stream, stream_events, query, astream, astream_events);
    # the spec's comment shows illustrative numbers ("total_streams": 4, 312 chunks)
    assert stats["total_streams"] == 5
    assert stats["total_chunks"] == 5 * n_chunks
    assert stats["total_errors"] == 0
    assert isinstance(stats["avg_stream_latency_s"], float)
    assert list(stats) == ["total_streams", "total_chunks", "total_errors", "avg_stream_latency_s"]
    assert stats == objects["rag"].stats


def test_simulation_fallback_output(quickstart) -> None:
    lines, objects, system = quickstart
    assert lines[-2] == GENERATED
    assert lines[-1] == ""
    assert objects["rag3"].stats["total_chunks"] == 3  # 8 words in chunks of 3
    assert system.queries[-1] == "Quick question for simulation mode"
    assert objects["rag2"].stats["total_streams"] == 0


def test_sync_llm_rag2_streams() -> None:
    """rag2 from the example (sync LLM, chunk_size=5 shortcut) streams the sync words."""
    from streaming_rag import StreamingRAG

    class MySyncLLM:
        def stream(self, prompt: str):
            for word in "Hello world from sync LLM".split():  # noqa: SIM905 (spec code)
                yield word + " "

    rag2 = StreamingRAG(rag_system=MyRagSystem(), llm=MySyncLLM(), chunk_size=5)
    assert list(rag2.stream("q")) == ["Hello ", "world ", "from ", "sync ", "LLM "]
