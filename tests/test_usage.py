"""Token usage (issue 13 item 4): the OpenAI-compatible adapter asks for and exposes it, the
worker records it in the job hash as the job ends (cancelled jobs included), and the client's
`status(details=True)` and the bridge's ``GET /answers/{id}`` return it. Event payloads keep
the spec's shapes. Real servers: `FakeOpenAIServer` over HTTP, a real worker, real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from helpers_core import WAIT_S
from openai_server import FakeOpenAIServer

from streaming_rag import EventType, StreamEvent, StreamingRAG
from streaming_rag.llms import OpenAICompatibleLLM
from streaming_rag.llms.usage import Usage, collect_usage, current_usage, usage_context
from streaming_rag_cli import build_parser
from streaming_rag_cli._commands import worker_app
from streaming_rag_client import JobStatus, StreamingRAGClient
from streaming_rag_client._core import JobDetails, details_from_fields
from streaming_rag_worker import WorkerConfigError
from streaming_rag_worker.llm_app import (
    BASE_URL_ENV,
    DOCS_ENV,
    MAX_TOKENS_ENV,
    MODEL_ENV,
    openai_app,
)
from streaming_rag_worker.usage import fields
from tests.helpers_queue import running_worker
from tests.queue_apps import ANSWER_WORDS, Backend, make_rag

TOKENS = ["The ", "sky ", "is ", "blue", "."]
CANCELLED = {"stage": "generation", "msg": "Cancelled"}
#: The spec's payload keys per metadata event.
SHAPES = {
    EventType.RETRIEVAL_START: {"query"},
    EventType.RETRIEVAL_DONE: {"num_docs", "docs"},
    EventType.GENERATION_START: {"prompt_chars"},
    EventType.GENERATION_DONE: {"total_latency"},
    EventType.ERROR: {"msg", "stage"},
}


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(TOKENS) as srv:
        yield srv


def make_llm(server: FakeOpenAIServer, **params: Any) -> OpenAICompatibleLLM:
    return OpenAICompatibleLLM(
        "test-model", base_url=server.base_url, api_key="sk-test", max_retries=0, **params
    )


def assert_spec_shapes(events: list[StreamEvent]) -> None:
    for event in events:
        if event.type is EventType.CHUNK:
            assert isinstance(event.data, str)
        else:
            assert set(event.data) == SHAPES[event.type], event


# -- the holder ------------------------------------------------------------------------------------
def test_collect_usage_scopes_a_fresh_holder() -> None:
    assert current_usage() is None
    with collect_usage() as outer:
        assert current_usage() is outer
        with collect_usage() as inner:
            assert current_usage() is inner is not outer
        assert current_usage() is outer
    assert current_usage() is None
    ctx, usage = usage_context()
    assert ctx.run(current_usage) is usage
    assert current_usage() is None


# -- the adapter -----------------------------------------------------------------------------------
async def test_adapter_asks_for_usage_and_fills_the_context_holder(
    server: FakeOpenAIServer,
) -> None:
    llm = make_llm(server)
    with collect_usage() as usage:
        assert [t async for t in llm.astream("Why?")] == TOKENS
    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert usage == Usage(
        prompt_tokens=7,
        completion_tokens=5,
        model="test-model",
        finish_reason="stop",
        reported=True,
    )
    assert llm.last_usage is usage


def test_sync_adapter_without_usage_reports_counts_its_chunks(server: FakeOpenAIServer) -> None:
    llm = make_llm(server, include_usage=False)
    assert list(llm.stream("Why?")) == TOKENS  # no collector: the adapter keeps its own
    assert "stream_options" not in server.requests[0].body
    assert llm.last_usage == Usage(
        completion_tokens=5, model="test-model", finish_reason="stop", reported=False
    )


async def test_a_stream_closed_early_keeps_the_chunks_counted_so_far(
    server: FakeOpenAIServer,
) -> None:
    server.pause_after = 2
    llm = make_llm(server)
    with collect_usage() as usage:
        stream = llm.astream("Why?")
        assert [await anext(stream), await anext(stream)] == TOKENS[:2]
        await stream.aclose()
    assert await asyncio.to_thread(server.disconnected.wait, WAIT_S)
    assert usage == Usage(completion_tokens=2, model="test-model", reported=False)


# -- the worker, the client ------------------------------------------------------------------------
async def test_worker_records_the_reported_usage_and_status_returns_it(
    redis_url: str, key_prefix: str, server: FakeOpenAIServer
) -> None:
    rag = StreamingRAG(Backend(), make_llm(server))
    async with (
        running_worker(redis_url, key_prefix, rag),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
    ):
        job_id = await client.asubmit("Why is the sky blue?")
        events = [e async for e in client.aevents(job_id)]
        details = await client.astatus(job_id, details=True)
        assert await client.astatus(job_id) is JobStatus.DONE  # the plain form is unchanged
        sync_details = await asyncio.to_thread(client.status, job_id, details=True)
    assert "".join(e.data for e in events if e.type is EventType.CHUNK) == "".join(TOKENS)
    assert events[-1].type is EventType.GENERATION_DONE
    assert_spec_shapes(events)
    assert (
        details
        == sync_details
        == JobDetails(JobStatus.DONE, 7, 5, "reported", "test-model", "stop")
    )


async def test_a_cancelled_job_records_the_tokens_counted_so_far(
    redis_url: str, key_prefix: str, server: FakeOpenAIServer
) -> None:
    server.pause_after = 2
    rag = StreamingRAG(Backend(), make_llm(server))
    async with (
        running_worker(redis_url, key_prefix, rag),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
    ):
        job_id = await client.asubmit("Why is the sky blue?")
        seen: list[StreamEvent] = []
        async with aclosing(client.aevents(job_id)) as events:
            async for event in events:
                seen.append(event)
                if event.type is EventType.CHUNK and event.data == TOKENS[1]:
                    assert await client.acancel(job_id)
        details = await client.astatus(job_id, details=True)
    assert (seen[-1].type, seen[-1].data) == (EventType.ERROR, CANCELLED)
    assert_spec_shapes(seen)
    assert await asyncio.to_thread(server.disconnected.wait, WAIT_S)
    assert details == JobDetails(JobStatus.CANCELLED, None, 2, "counted", "test-model", "cancelled")


async def test_an_llm_without_usage_gets_its_chunks_counted(
    redis_url: str, key_prefix: str
) -> None:
    async with (
        running_worker(redis_url, key_prefix, make_rag()),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
    ):
        job_id = await client.asubmit("q")
        assert (await client.aquery("q"))["answer"]  # another job, to the end
        events = [e async for e in client.aevents(job_id)]
        details = await client.astatus(job_id, details=True)
        missing = await client.astatus("0" * 32, details=True)
    assert sum(e.type is EventType.CHUNK for e in events) == len(ANSWER_WORDS)
    assert details == JobDetails(JobStatus.DONE, None, len(ANSWER_WORDS), "counted")
    assert missing == JobDetails(JobStatus.NOT_FOUND)


# -- parsing and the recorded fields ---------------------------------------------------------------
def test_details_from_fields_reads_bytes_and_str_and_drops_malformed_counts() -> None:
    got = details_from_fields(JobStatus.DONE, [b"12", "30", b"reported", b"m", "length"])
    assert got == JobDetails(JobStatus.DONE, 12, 30, "reported", "m", "length")
    bad = details_from_fields(JobStatus.FAILED, [b"x", b"-1", None])
    assert bad == JobDetails(JobStatus.FAILED)
    assert bad.as_dict() == {
        "status": "failed",
        "prompt_tokens": None,
        "completion_tokens": None,
        "usage_source": None,
        "model": None,
        "finish_reason": None,
    }


def test_recorded_fields() -> None:
    class Named:
        model = "from-the-llm"

    counted = Usage(chunks=4)
    assert fields(counted, "failed", Named()) == {
        "usage_completion_tokens": 4,
        "usage_source": "counted",
        "model": "from-the-llm",
        "finish_reason": "error",
    }
    reported = Usage(3, 9, "served-name", "length", reported=True, chunks=9)
    assert fields(reported, "done", Named()) == {
        "usage_prompt_tokens": 3,
        "usage_completion_tokens": 9,
        "usage_source": "reported",
        "model": "served-name",
        "finish_reason": "length",
    }
    # an adapter that saw no chunk yet: its (empty) count, not the worker's
    assert fields(Usage(model="m"), "cancelled")["usage_completion_tokens"] == 0


# -- --llm-max-tokens ------------------------------------------------------------------------------
def test_llm_max_tokens_flag_sets_the_variable_openai_app_sends_as_max_tokens(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    parse = build_parser().parse_args
    app, env = worker_app(parse(["worker", "--llm-model", "m", "--llm-max-tokens", "48"]))
    assert app == "streaming_rag_worker.llm_app:openai_app"
    assert env == {MODEL_ENV: "m", MAX_TOKENS_ENV: "48"}
    (tmp_path / "sky.md").write_text("The sky is blue.\n", encoding="utf-8")
    rag = openai_app(
        env={DOCS_ENV: str(tmp_path), MODEL_ENV: "m", BASE_URL_ENV: server.base_url, **env}
    )
    assert rag.query("sky")["answer"] == "".join(TOKENS)
    assert server.requests[0].body["max_tokens"] == 48
    with pytest.raises(WorkerConfigError, match=MAX_TOKENS_ENV):
        openai_app(env={DOCS_ENV: str(tmp_path), MODEL_ENV: "m", MAX_TOKENS_ENV: "0"})


@pytest.mark.parametrize("argv", [["--llm-max-tokens", "0"], ["--llm-max-tokens", "many"]])
def test_llm_max_tokens_must_be_a_positive_integer(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--llm-model", "m", *argv])
    assert "--llm-max-tokens" in capsys.readouterr().err
