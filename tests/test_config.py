"""§2 StreamConfig: defaults, the built-in template, copying, validation at construction."""

from __future__ import annotations

import dataclasses

import pytest
from helpers_core import AsyncLLM, RetrieveOnly, SyncBackend, acollect

from streaming_rag import StreamConfig, StreamingRAG

SPEC_TEMPLATE = """You are a precise RAG assistant.
Strict rules:
- Use ONLY the provided context.
- Do NOT guess.
- If missing info, say: 'no information to answer '.
- The answer MUST be in the SAME language as the question.
- NEVER switch language.
Context:
{context}
Question: {query}
Final Answer:"""


def test_defaults_match_spec() -> None:
    cfg = StreamConfig()
    assert cfg.chunk_size == 10
    assert cfg.sim_delay == 0.04
    assert cfg.max_context_docs == 5
    assert cfg.max_doc_chars == 500
    assert cfg.emit_metadata is True
    assert cfg.retrieval_timeout == 10.0
    assert cfg.generation_timeout == 60.0
    assert cfg.prompt_template == SPEC_TEMPLATE


def test_fields_and_order_match_spec_constructor() -> None:
    names = [f.name for f in dataclasses.fields(StreamConfig)]
    assert names == [
        "chunk_size",
        "sim_delay",
        "max_context_docs",
        "max_doc_chars",
        "emit_metadata",
        "retrieval_timeout",
        "generation_timeout",
        "prompt_template",
    ]
    # positional construction in spec order works
    cfg = StreamConfig(3, 0.0, 2, 7, False, 1.0, 2.0, "{context}{query}")
    assert (cfg.chunk_size, cfg.max_doc_chars, cfg.generation_timeout) == (3, 7, 2.0)


def test_spec_example_config_is_accepted() -> None:
    config = StreamConfig(
        chunk_size=5,
        max_context_docs=8,
        max_doc_chars=800,
        retrieval_timeout=15.0,
        generation_timeout=90.0,
        prompt_template=("Context:\n{context}\n\nQuestion: {query}\n\nAnswer concisely:"),
    )
    rag = StreamingRAG(SyncBackend(), config=config)
    assert repr(rag) == "StreamingRAG(llm=sim, chunk_size=5)"


async def test_builtin_template_is_used_for_the_prompt() -> None:
    llm = AsyncLLM()
    rag = StreamingRAG(RetrieveOnly(["doc one", "doc two"]), llm=llm)
    events = await acollect(rag.astream_events("Who?"))
    expected = SPEC_TEMPLATE.format(context="doc one\n\ndoc two", query="Who?")
    assert llm.prompts == [expected]
    assert events[2].data == {"prompt_chars": len(expected)}


async def test_config_is_copied_at_construction() -> None:
    cfg = StreamConfig(chunk_size=4, prompt_template="C={context} Q={query}")
    llm = AsyncLLM()
    rag = StreamingRAG(RetrieveOnly(["d"]), llm=llm, config=cfg)
    cfg.chunk_size = 99
    cfg.prompt_template = "CHANGED {context} {query}"
    cfg.max_context_docs = 0
    assert repr(rag) == "StreamingRAG(llm=async, chunk_size=4)"
    await acollect(rag.astream_events("q"))
    assert llm.prompts == ["C=d Q=q"]


def test_chunk_size_keyword_overrides_the_copy_only() -> None:
    cfg = StreamConfig(chunk_size=4)
    rag = StreamingRAG(SyncBackend(), config=cfg, chunk_size=7)
    assert repr(rag) == "StreamingRAG(llm=sim, chunk_size=7)"
    assert cfg.chunk_size == 4
    rag_default = StreamingRAG(SyncBackend(), chunk_size=2)
    assert repr(rag_default) == "StreamingRAG(llm=sim, chunk_size=2)"
    assert StreamConfig().chunk_size == 10


def test_none_config_gives_defaults() -> None:
    assert repr(StreamingRAG(SyncBackend())) == "StreamingRAG(llm=sim, chunk_size=10)"


def test_two_instances_do_not_share_config() -> None:
    cfg = StreamConfig()
    a = StreamingRAG(SyncBackend(), config=cfg, chunk_size=1)
    b = StreamingRAG(SyncBackend(), config=cfg, chunk_size=2)
    assert repr(a).endswith("chunk_size=1)")
    assert repr(b).endswith("chunk_size=2)")


@pytest.mark.parametrize(
    "template",
    [
        "no placeholders at all",
        "only {context}",
        "only {query}",
        "{context} {query} {extra}",
        "{context} {query} {}",
        "{context} {query} {0}",
        "{context} {query} {",
        "{context} {query} }",
    ],
)
def test_bad_template_rejected_with_value_error(template: str) -> None:
    with pytest.raises(ValueError, match="prompt_template"):
        StreamingRAG(SyncBackend(), config=StreamConfig(prompt_template=template))


def test_bad_template_message_names_the_placeholders() -> None:
    with pytest.raises(ValueError) as info:
        StreamingRAG(SyncBackend(), config=StreamConfig(prompt_template="{context} {foo}"))
    msg = str(info.value)
    assert "{query}" in msg
    assert "{foo}" in msg


async def test_escaped_braces_are_allowed_and_rendered() -> None:
    llm = AsyncLLM()
    cfg = StreamConfig(prompt_template='{{"json": true}} {context} / {query} {context}')
    rag = StreamingRAG(RetrieveOnly(["ctx"]), llm=llm, config=cfg)
    await acollect(rag.astream_events("q"))
    assert llm.prompts == ['{"json": true} ctx / q ctx']


def test_template_is_not_validated_in_the_dataclass_itself() -> None:
    # the dataclass is mutable; validation happens when StreamingRAG is built
    cfg = StreamConfig(prompt_template="bad")
    assert cfg.prompt_template == "bad"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chunk_size": 0},
        {"chunk_size": -1},
        {"chunk_size": 1.5},
        {"sim_delay": -0.1},
        {"max_context_docs": -1},
        {"max_doc_chars": -1},
        {"retrieval_timeout": 0},
        {"generation_timeout": -1.0},
        {"generation_timeout": float("inf")},
    ],
)
def test_unusable_values_rejected_with_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        StreamingRAG(SyncBackend(), config=StreamConfig(**kwargs))


def test_chunk_size_keyword_is_validated() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        StreamingRAG(SyncBackend(), chunk_size=0)


def test_emit_metadata_false_still_emits_every_event() -> None:
    rag = StreamingRAG(
        SyncBackend(answer="a b"),
        config=StreamConfig(emit_metadata=False, sim_delay=0, chunk_size=1),
    )
    result = rag.query("q")
    assert [e.type.value for e in result["events"]] == [
        "retrieval_start",
        "retrieval_done",
        "generation_start",
        "chunk",
        "chunk",
        "generation_done",
    ]
