"""Retrieval (§3.4 steps 2-4): sync/async retrieve, doc normalisation, num_docs, context block.

Normalisation rule (documented in `streaming_rag._documents`): None → []; a single item → a list
of one; str → {"content": s}; bytes → decoded content; a mapping → dict(item); an object with
`page_content`/`content`/`text` → that key (+ `metadata` when present); anything else →
{"content": str(item)}. The context block is the first `max_context_docs` docs' texts, each cut
to `max_doc_chars`, joined by a blank line.
"""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from helpers_core import AsyncBackend, AsyncLLM, SyncBackend, acollect

from streaming_rag import EventType, StreamConfig, StreamingRAG

TEMPLATE = "[{context}]|{query}"


def make(docs: Any, **cfg: Any) -> tuple[StreamingRAG, AsyncLLM]:
    llm = AsyncLLM(["ok"])
    config = StreamConfig(prompt_template=TEMPLATE, **cfg)
    return StreamingRAG(SyncBackend(docs=docs), llm=llm, config=config), llm


async def retrieval_done(rag: StreamingRAG) -> dict:
    events = await acollect(rag.astream_events("q"))
    (done,) = [e for e in events if e.type is EventType.RETRIEVAL_DONE]
    return done.data


async def test_sync_retrieve_runs_off_the_loop_thread() -> None:
    backend = SyncBackend()
    rag = StreamingRAG(backend, llm=AsyncLLM())
    await acollect(rag.astream_events("what"))
    assert backend.retrieve_calls == ["what"]
    assert backend.retrieve_threads[0] != threading.get_ident()


async def test_sync_retrieve_does_not_block_the_loop() -> None:
    """The retriever waits for an Event that only a coroutine on the loop sets."""
    go = threading.Event()
    waited: list[bool] = []

    class Blocking:
        def retrieve(self, query: str) -> list[str]:
            waited.append(go.wait(5))
            return ["d"]

    async def setter() -> None:
        await asyncio.sleep(0)
        go.set()

    rag = StreamingRAG(Blocking(), llm=AsyncLLM())
    task = asyncio.create_task(setter())
    events = await acollect(rag.astream_events("q"))
    await task
    assert waited == [True]
    assert events[-1].type is EventType.GENERATION_DONE


async def test_async_retrieve_is_awaited_on_the_loop() -> None:
    backend = AsyncBackend(docs=["x", "y"])
    rag = StreamingRAG(backend, llm=AsyncLLM())
    data = await retrieval_done(rag)
    assert backend.retrieve_calls == ["q"]
    assert backend.retrieve_threads == [threading.get_ident()]
    assert data == {"num_docs": 2, "docs": [{"content": "x"}, {"content": "y"}]}


async def test_sync_retrieve_returning_awaitable_is_awaited() -> None:
    class Wrapped:
        def retrieve(self, query: str):
            async def inner() -> list[str]:
                return ["late"]

            return inner()

    rag = StreamingRAG(Wrapped(), llm=AsyncLLM())
    assert (await retrieval_done(rag))["docs"] == [{"content": "late"}]


class PageDoc:  # LangChain-like
    def __init__(self, text: str, metadata: Any = None) -> None:
        self.page_content = text
        self.metadata = metadata


class ContentDoc:
    def __init__(self, text: str) -> None:
        self.content = text


class TextNode:  # LlamaIndex-like
    def __init__(self, text: str, metadata: Any) -> None:
        self.text = text
        self.metadata = metadata


class Opaque:
    def __str__(self) -> str:
        return "opaque!"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, []),
        ([], []),
        ("just text", [{"content": "just text"}]),
        (b"bytes \xc3\xa9", [{"content": "bytes é"}]),
        ({"content": "one", "score": 0.9}, [{"content": "one", "score": 0.9}]),
        ({"title": "no text key"}, [{"title": "no text key"}]),
        (["a", "b"], [{"content": "a"}, {"content": "b"}]),
        (("a", "b"), [{"content": "a"}, {"content": "b"}]),
        ([{"text": "t", "id": 3}], [{"text": "t", "id": 3}]),
        (PageDoc("pc", {"src": "f.txt"}), [{"page_content": "pc", "metadata": {"src": "f.txt"}}]),
        ([PageDoc("pc")], [{"page_content": "pc"}]),
        ([ContentDoc("cd")], [{"content": "cd"}]),
        ([TextNode("tn", {"p": 1})], [{"text": "tn", "metadata": {"p": 1}}]),
        (SimpleNamespace(content="ns"), [{"content": "ns"}]),
        (42, [{"content": "42"}]),
        ([Opaque(), 7], [{"content": "opaque!"}, {"content": "7"}]),
        (
            ["s", {"content": "d"}, PageDoc("p"), 1.5],
            [{"content": "s"}, {"content": "d"}, {"page_content": "p"}, {"content": "1.5"}],
        ),
    ],
    ids=lambda v: type(v).__name__,
)
async def test_normalisation(raw: Any, expected: list) -> None:
    rag, _ = make(raw)
    data = await retrieval_done(rag)
    assert data == {"num_docs": len(expected), "docs": expected}
    assert all(type(d) is dict for d in data["docs"])


async def test_generator_of_docs_is_normalised() -> None:
    rag, _ = make(s for s in ["g1", "g2", "g3"])
    assert await retrieval_done(rag) == {
        "num_docs": 3,
        "docs": [{"content": "g1"}, {"content": "g2"}, {"content": "g3"}],
    }


async def test_mapping_docs_are_copied_not_shared() -> None:
    original = {"content": "c"}
    rag, _ = make([original])
    data = await retrieval_done(rag)
    assert data["docs"] == [original]
    assert data["docs"][0] is not original


async def test_num_docs_is_the_raw_count_and_docs_are_not_truncated() -> None:
    raw = [f"doc{i}" for i in range(9)]
    rag, llm = make(raw, max_context_docs=2)
    data = await retrieval_done(rag)
    assert data["num_docs"] == 9
    assert [d["content"] for d in data["docs"]] == raw
    assert llm.prompts == ["[doc0\n\ndoc1]|q"]


async def test_context_block_truncation_per_doc_and_count() -> None:
    raw = ["aaaaaa", {"page_content": "bbbbbb"}, PageDoc("cccccc"), "dddddd"]
    rag, llm = make(raw, max_context_docs=3, max_doc_chars=4)
    events = await acollect(rag.astream_events("Q?"))
    assert llm.prompts == ["[aaaa\n\nbbbb\n\ncccc]|Q?"]
    start = next(e for e in events if e.type is EventType.GENERATION_START)
    assert start.data == {"prompt_chars": len("[aaaa\n\nbbbb\n\ncccc]|Q?")}


async def test_max_context_docs_zero_gives_empty_context() -> None:
    rag, llm = make(["a", "b"], max_context_docs=0)
    await acollect(rag.astream_events("q"))
    assert llm.prompts == ["[]|q"]


async def test_max_doc_chars_zero_gives_empty_texts() -> None:
    rag, llm = make(["abc", "def"], max_doc_chars=0)
    await acollect(rag.astream_events("q"))
    assert llm.prompts == ["[\n\n]|q"]


async def test_doc_without_text_key_contributes_its_dict_as_text() -> None:
    rag, llm = make([{"title": "T"}], max_doc_chars=500)
    await acollect(rag.astream_events("q"))
    assert llm.prompts == ["[{'title': 'T'}]|q"]


async def test_spec_default_limits_five_docs_500_chars() -> None:
    raw = ["x" * 600 for _ in range(7)]
    llm = AsyncLLM(["ok"])
    rag = StreamingRAG(
        SyncBackend(docs=raw), llm=llm, config=StreamConfig(prompt_template=TEMPLATE)
    )
    events = await acollect(rag.astream_events("q"))
    context = "\n\n".join(["x" * 500] * 5)
    assert llm.prompts == [f"[{context}]|q"]
    assert events[1].data["num_docs"] == 7
    assert events[2].data["prompt_chars"] == len(f"[{context}]|q")


async def test_prompt_chars_counts_unicode_characters() -> None:
    rag, llm = make(["مرحبا بالعالم"])
    events = await acollect(rag.astream_events("ماهي؟"))
    assert events[2].data["prompt_chars"] == len(llm.prompts[0]) == len("[مرحبا بالعالم]|ماهي؟")
