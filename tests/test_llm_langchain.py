"""`LangChainLLM` with langchain-core's own fake chat models and plain runnables."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from helpers_core import WAIT_S
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    FakeListChatModelError,
    GenericFakeChatModel,
    ParrotFakeChatModel,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.runnables import RunnableGenerator

from streaming_rag import AsyncStreamableLLM, EventType, StreamingRAG, SyncStreamableLLM
from streaming_rag.exceptions import BackendError, LLMError
from streaming_rag.llms import LangChainLLM
from streaming_rag.llms.langchain import chunk_text

DOC = "Ravens can imitate human speech."

#: Message chunks whose content is a list of parts, as Anthropic-style models stream them.
PART_CHUNKS = [
    AIMessageChunk(content=[{"type": "thinking", "thinking": "hmm"}]),  # no text: skipped
    AIMessageChunk(content=[{"type": "text", "text": "Ravens ", "index": 0}, "can "]),
    AIMessageChunk(content=[{"type": "tool_use", "id": "t1", "name": "search", "input": {}}]),
    AIMessageChunk(content=[{"type": "text", "text": "talk."}]),
]
PART_TOKENS = ["Ravens can ", "talk."]


class Backend:
    def retrieve(self, query: str) -> list[str]:
        return [DOC]


def words(text: str) -> RunnableGenerator[Any, Any]:
    """A plain runnable yielding the words of `text` as strings (sync and async)."""

    def gen(inputs: Iterator[Any]) -> Iterator[str]:
        for _ in inputs:
            pass
        yield from text.split(" ")

    async def agen(inputs: AsyncIterator[Any]) -> AsyncIterator[str]:
        async for _ in inputs:
            pass
        for word in text.split(" "):
            yield word

    return RunnableGenerator(gen, agen, name="words")


def part_chunks() -> RunnableGenerator[Any, Any]:
    def gen(inputs: Iterator[Any]) -> Iterator[AIMessageChunk]:
        for _ in inputs:
            pass
        yield from PART_CHUNKS

    async def agen(inputs: AsyncIterator[Any]) -> AsyncIterator[AIMessageChunk]:
        async for _ in inputs:
            pass
        for chunk in PART_CHUNKS:
            yield chunk

    return RunnableGenerator(gen, agen)


class Tracked:
    """A runnable that never ends on its own and records when its generator is closed.

    Sync: "tick " forever. Async: one "tick ", then it waits for ever (until closed).
    """

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.runnable = RunnableGenerator(self._gen, self._agen)

    def _gen(self, inputs: Iterator[Any]) -> Iterator[str]:
        try:
            while True:
                yield "tick "
        finally:
            self.closed.set()

    async def _agen(self, inputs: AsyncIterator[Any]) -> AsyncIterator[str]:
        try:
            yield "tick "
            await asyncio.Event().wait()
        finally:
            self.closed.set()


# -- fake chat models ------------------------------------------------------------------------------
def test_sync_generic_fake_chat_model_streams_its_message_without_empty_chunks() -> None:
    model = GenericFakeChatModel(messages=iter([AIMessage(content="Ravens  can talk")]))
    tokens = list(LangChainLLM(model).stream("q"))
    assert "".join(tokens) == "Ravens  can talk"
    assert len(tokens) > 1  # streamed, not one block
    assert "" not in tokens  # re.split leaves empty pieces between the two spaces


async def test_async_fake_list_chat_model_streams_character_by_character() -> None:
    llm = LangChainLLM(FakeListChatModel(responses=["Caw!"]))
    assert [token async for token in llm.astream("q")] == ["C", "a", "w", "!"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failing_chat_model_raises_llm_error_after_the_partial_answer(mode: str) -> None:
    llm = LangChainLLM(FakeListChatModel(responses=["abcdef"], error_on_chunk_number=3))
    received: list[str] = []

    async def consume() -> None:
        async for token in llm.astream("q"):
            received.append(token)

    with pytest.raises(LLMError) as info:
        if mode == "sync":
            for token in llm.stream("q"):
                received.append(token)
        else:
            asyncio.run(consume())
    assert received == ["a", "b", "c"]
    assert str(info.value).startswith(
        "LangChain runnable FakeListChatModel failed: FakeListChatModelError"
    )
    assert isinstance(info.value.__cause__, FakeListChatModelError)


# -- content parts and strings ---------------------------------------------------------------------
def test_sync_content_part_lists_yield_only_their_text() -> None:
    assert list(LangChainLLM(part_chunks()).stream("q")) == PART_TOKENS


async def test_async_content_part_lists_yield_only_their_text() -> None:
    assert [t async for t in LangChainLLM(part_chunks()).astream("q")] == PART_TOKENS


def test_sync_plain_runnable_of_strings() -> None:
    assert list(LangChainLLM(words("a b c")).stream("q")) == ["a", "b", "c"]


async def test_async_plain_runnable_of_strings() -> None:
    assert [t async for t in LangChainLLM(words("a b c")).astream("q")] == ["a", "b", "c"]


def test_chunk_text_rejects_items_without_text() -> None:
    assert chunk_text(AIMessageChunk(content="x")) == "x"
    assert chunk_text(AIMessageChunk(content=[])) == ""
    with pytest.raises(TypeError, match=r"yielded dict.*StrOutputParser"):
        chunk_text({"answer": "x"})


def test_config_reaches_the_runnable() -> None:
    def gen(inputs: Iterator[Any], config: dict[str, Any]) -> Iterator[str]:
        for _ in inputs:
            pass
        yield f"{config['tags']}:{config['configurable']['user']}"

    runnable: RunnableGenerator[Any, str] = RunnableGenerator(gen)  # type: ignore[arg-type]
    llm = LangChainLLM(runnable, config={"tags": ["rag"], "configurable": {"user": "u1"}})
    assert list(llm.stream("q")) == ["['rag']:u1"]


# -- closing ---------------------------------------------------------------------------------------
def test_sync_early_close_closes_the_runnable_stream() -> None:
    tracked = Tracked()
    stream = LangChainLLM(tracked.runnable).stream("q")
    assert next(stream) == "tick "
    assert not tracked.closed.is_set()
    stream.close()
    assert tracked.closed.wait(WAIT_S)


async def test_async_early_close_closes_the_runnable_stream() -> None:
    tracked = Tracked()
    stream = LangChainLLM(tracked.runnable).astream("q")
    assert await anext(stream) == "tick "
    assert not tracked.closed.is_set()
    await stream.aclose()
    assert tracked.closed.is_set()


# -- through StreamingRAG --------------------------------------------------------------------------
def test_satisfies_both_protocols_so_the_pipeline_uses_the_async_strategy() -> None:
    llm = LangChainLLM(FakeListChatModel(responses=["x"]))
    assert isinstance(llm, AsyncStreamableLLM)
    assert isinstance(llm, SyncStreamableLLM)
    assert StreamingRAG(Backend(), llm).strategy == "async"
    assert repr(llm) == "LangChainLLM(FakeListChatModel)"


def test_streaming_rag_sends_the_prompt_and_streams_the_answer() -> None:
    result = StreamingRAG(Backend(), LangChainLLM(ParrotFakeChatModel())).query("Can ravens talk?")
    # the parrot answers with the prompt it was given
    assert DOC in result["answer"]
    assert "Can ravens talk?" in result["answer"]
    assert result["events"][-1].type is EventType.GENERATION_DONE


def test_streaming_rag_streams_content_parts() -> None:
    result = StreamingRAG(Backend(), LangChainLLM(part_chunks())).query("q")
    assert [e.data for e in result["events"] if e.type is EventType.CHUNK] == PART_TOKENS


def test_streaming_rag_error_event_names_the_runnable() -> None:
    llm = LangChainLLM(FakeListChatModel(responses=["abcdef"], error_on_chunk_number=2))
    result = StreamingRAG(Backend(), llm).query("q")
    assert result["answer"] == "ab"
    last = result["events"][-1]
    assert last.type is EventType.ERROR
    assert last.data["msg"].startswith("LangChain runnable FakeListChatModel failed")


def test_streaming_rag_consumer_stopping_early_closes_the_runnable_stream() -> None:
    tracked = Tracked()
    stream = StreamingRAG(Backend(), LangChainLLM(tracked.runnable)).stream("q")
    assert next(stream) == "tick "
    stream.close()
    assert tracked.closed.wait(WAIT_S)


# -- construction ----------------------------------------------------------------------------------
def test_an_object_that_cannot_stream_is_a_backend_error() -> None:
    class OnlySync:
        def stream(self, prompt: str) -> Iterator[str]:
            yield prompt

    with pytest.raises(BackendError, match="OnlySync has no astream"):
        LangChainLLM(OnlySync())


def test_missing_langchain_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "from streaming_rag.llms import LangChainLLM\n"
        "try:\n"
        "    LangChainLLM(object())\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install -e ".[langchain]"' in out.stdout
