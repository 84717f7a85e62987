"""§6 Protocols, §7 strategy selection, §3.6 repr, and `llm=None` falling back to rag_system.llm."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator

import pytest
from helpers_core import AsyncLLM, RetrieveOnly, SyncBackend, SyncLLM, acollect, chunks

from streaming_rag import AsyncStreamableLLM, StreamConfig, StreamingRAG, SyncStreamableLLM


class OnlyAsync:
    async def astream(self, prompt: str) -> AsyncIterator[str]:
        yield "from-async"


class OnlySync:
    def stream(self, prompt: str) -> Iterator[str]:
        yield "from-sync"


class Both(OnlyAsync, OnlySync):
    pass


class NotStreamable:
    def generate(self, prompt: str) -> str:  # e.g. a plain completion client
        return "unused"


def test_protocols_are_runtime_checkable() -> None:
    assert isinstance(OnlyAsync(), AsyncStreamableLLM)
    assert not isinstance(OnlyAsync(), SyncStreamableLLM)
    assert isinstance(OnlySync(), SyncStreamableLLM)
    assert not isinstance(OnlySync(), AsyncStreamableLLM)
    assert isinstance(Both(), AsyncStreamableLLM)
    assert isinstance(Both(), SyncStreamableLLM)
    assert not isinstance(NotStreamable(), SyncStreamableLLM)
    assert not isinstance(NotStreamable(), AsyncStreamableLLM)
    assert not isinstance(None, SyncStreamableLLM)


def test_spec_protocol_examples() -> None:
    class MyOpenAILLM:
        def stream(self, prompt: str) -> Iterator[str]:
            yield from ()

    class MyAsyncLLM:
        async def astream(self, prompt: str) -> AsyncIterator[str]:
            if False:
                yield ""

    assert isinstance(MyOpenAILLM(), SyncStreamableLLM)
    assert isinstance(MyAsyncLLM(), AsyncStreamableLLM)


@pytest.mark.parametrize(
    ("llm", "label"),
    [(OnlyAsync(), "async"), (OnlySync(), "sync"), (Both(), "async"), (None, "sim")],
)
@pytest.mark.parametrize("size", [1, 10, 37])
def test_repr_forms(llm: object, label: str, size: int) -> None:
    rag = StreamingRAG(SyncBackend(), llm=llm, chunk_size=size)
    assert repr(rag) == f"StreamingRAG(llm={label}, chunk_size={size})"


def test_repr_default_chunk_size() -> None:
    assert repr(StreamingRAG(SyncBackend(), llm=OnlyAsync())) == (
        "StreamingRAG(llm=async, chunk_size=10)"
    )


def test_non_streamable_llm_selects_simulation() -> None:
    rag = StreamingRAG(SyncBackend(), llm=NotStreamable())
    assert repr(rag) == "StreamingRAG(llm=sim, chunk_size=10)"


async def test_async_preferred_over_sync_when_both() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=Both())
    assert chunks(await acollect(rag.astream_events("q"))) == ["from-async"]


async def test_sync_strategy_used_for_sync_llm() -> None:
    rag = StreamingRAG(RetrieveOnly(), llm=OnlySync())
    assert chunks(await acollect(rag.astream_events("q"))) == ["from-sync"]


async def test_simulation_used_without_llm() -> None:
    backend = SyncBackend(answer="simulated answer")
    rag = StreamingRAG(backend, config=StreamConfig(sim_delay=0))
    assert "".join(chunks(await acollect(rag.astream_events("q")))) == "simulated answer"
    assert backend.generate_calls == [("q", {})]


async def test_llm_none_falls_back_to_rag_system_llm() -> None:
    inner = AsyncLLM(["inner"])
    backend = SyncBackend(llm=inner)
    rag = StreamingRAG(backend)
    assert repr(rag) == "StreamingRAG(llm=async, chunk_size=10)"
    assert chunks(await acollect(rag.astream_events("q"))) == ["inner"]
    assert len(inner.prompts) == 1
    assert backend.generate_calls == []


async def test_rag_system_sync_llm_fallback() -> None:
    inner = SyncLLM(["s1", "s2"])
    rag = StreamingRAG(SyncBackend(llm=inner))
    assert repr(rag) == "StreamingRAG(llm=sync, chunk_size=10)"
    assert chunks(await acollect(rag.astream_events("q"))) == ["s1", "s2"]


async def test_explicit_llm_beats_rag_system_llm() -> None:
    inner = AsyncLLM(["inner"])
    outer = SyncLLM(["outer"])
    rag = StreamingRAG(SyncBackend(llm=inner), llm=outer)
    assert repr(rag) == "StreamingRAG(llm=sync, chunk_size=10)"
    assert chunks(await acollect(rag.astream_events("q"))) == ["outer"]
    assert inner.prompts == []


async def test_non_streamable_rag_system_llm_uses_generate() -> None:
    backend = SyncBackend(answer="gen", llm=NotStreamable())
    rag = StreamingRAG(backend, config=StreamConfig(sim_delay=0))
    assert repr(rag) == "StreamingRAG(llm=sim, chunk_size=10)"
    assert chunks(await acollect(rag.astream_events("q"))) == ["gen"]


async def test_async_def_astream_returning_async_iterator_is_accepted() -> None:
    class CoroLLM:
        async def astream(self, prompt: str):  # a coroutine returning an async iterator
            async def gen():
                yield "co"
                yield "ro"

            return gen()

    rag = StreamingRAG(RetrieveOnly(), llm=CoroLLM())
    assert repr(rag).startswith("StreamingRAG(llm=async")
    assert chunks(await acollect(rag.astream_events("q"))) == ["co", "ro"]


def test_rag_system_without_retrieve_is_rejected() -> None:
    class NoRetrieve:
        def generate(self, q: str, c: dict) -> str:
            return ""

    with pytest.raises(TypeError, match="retrieve"):
        StreamingRAG(NoRetrieve())
    with pytest.raises(TypeError, match="retrieve"):
        StreamingRAG(None)


def test_selection_happens_once_at_construction() -> None:
    calls = threading.Event()

    class LLM:
        def stream(self, prompt: str) -> Iterator[str]:
            calls.set()
            yield "x"

    rag = StreamingRAG(SyncBackend(), llm=LLM())
    assert repr(rag) == "StreamingRAG(llm=sync, chunk_size=10)"
    assert not calls.is_set()  # choosing a strategy never calls the LLM
