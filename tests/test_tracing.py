"""OpenTelemetry traces across the hop (extra `otel`): the bridge's request span, the job's
trace context carried in the request, the worker's job span and its children, recorded by the
SDK's in-memory exporter over a real bridge (uvicorn) and a real worker."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streaming_rag.exceptions import InvalidRequest
from streaming_rag.wire import parse_request
from streaming_rag.wire.codec import unpack_job
from streaming_rag.wire.models import arq_job_record, request_from_payload
from streaming_rag_client import StreamingRAGClient, tracing
from tests.helpers_queue import running_worker
from tests.helpers_web import MOUNT, WAIT_S, Message, messages, sse, web_stack
from tests.queue_apps import ANSWER_WORDS, make_rag

JOB_CHILDREN = {
    "streaming_rag.queue_wait",
    "streaming_rag.retrieval",
    "streaming_rag.generation",
    "streaming_rag.publish",
}


class _Ended(SpanProcessor):
    """Wakes the test when a span ends (spans end on this event loop's thread)."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        self.changed.set()


class Spans:
    def __init__(self, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
        self.provider = provider
        self.exporter = exporter
        self.ended = _Ended()
        provider.add_span_processor(self.ended)

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    async def wait_for(self, names: set[str]) -> dict[str, ReadableSpan]:
        """The finished spans by name once every one of `names` has ended (bounded)."""

        async def until() -> None:
            while not names <= {s.name for s in self.finished()}:
                self.ended.changed.clear()
                if names <= {s.name for s in self.finished()}:
                    return
                await self.ended.changed.wait()

        try:
            await asyncio.wait_for(until(), WAIT_S)
        except TimeoutError:
            have = sorted(s.name for s in self.finished())
            raise AssertionError(f"spans {sorted(names)} did not all end; ended: {have}") from None
        by_name: dict[str, ReadableSpan] = {}
        for span in self.finished():
            assert span.name not in by_name, f"two spans named {span.name}"
            by_name[span.name] = span
        return by_name


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spans]:
    """An SDK tracer provider as the global one for this test only (the API allows setting it
    once per process, so the test swaps the global and monkeypatch puts the default back)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield Spans(provider, exporter)
    provider.shutdown()


def _parent(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _entry_ns(message: Message) -> int:
    """The publish time of an event: its entry id's milliseconds (the worker's clock)."""
    assert message.id is not None
    return int(message.id.split("-")[0]) * 1_000_000


async def test_one_trace_from_the_http_request_to_the_last_token(redis_url, key_prefix, spans):
    tracer = spans.provider.get_tracer("tests")
    async with web_stack(redis_url, key_prefix) as stack:
        with tracer.start_as_current_span("caller") as caller:
            headers: dict[str, str] = {}
            propagate.inject(headers)  # the caller's traceparent, as an instrumented client sends
            response = await stack.http.post("/answers", json={"query": "q"}, headers=headers)
            assert response.status_code == 202, response.text
            body = response.json()
            job_id = body["job_id"]
            async with stack.http.stream(
                "GET", stack.url(body["events_url"]), headers=headers
            ) as stream:
                assert stream.status_code == 200
                events = await messages(sse(stream))
        post_name = f"POST {MOUNT}/answers"
        watch_name = f"GET {MOUNT}/answers/{{job_id}}/events"
        by_name = await spans.wait_for(
            {"caller", post_name, watch_name, "streaming_rag.job", *JOB_CHILDREN}
        )

    assert [m.event for m in events][-1] == "generation_done"
    chunk_events = [m for m in events if m.event == "chunk"]
    assert len(chunk_events) == len(ANSWER_WORDS)

    # one trace: every span shares the caller's trace id
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in spans.finished() if s.context} == {trace_id}

    post, watch, job = by_name[post_name], by_name[watch_name], by_name["streaming_rag.job"]
    # the bridge's request spans are children of the caller (its traceparent header)
    assert post.kind is trace.SpanKind.SERVER and watch.kind is trace.SpanKind.SERVER
    assert _parent(post) == _parent(watch) == _id(by_name["caller"])
    assert post.attributes is not None and watch.attributes is not None
    assert post.attributes["http.route"] == f"{MOUNT}/answers"
    assert post.attributes["http.response.status_code"] == 202
    assert post.attributes["streaming_rag.job_id"] == job_id
    assert watch.attributes["streaming_rag.job_id"] == job_id
    # the watch request links to the request that submitted the job
    assert [link.context.span_id for link in watch.links] == [_id(post)]

    # the job span is a child of the HTTP request span: the context crossed the queue
    assert job.kind is trace.SpanKind.CONSUMER
    assert _parent(job) == _id(post)
    assert job.attributes is not None
    assert job.attributes["streaming_rag.job_id"] == job_id
    assert job.attributes["streaming_rag.prefix"] == key_prefix
    assert str(job.attributes["streaming_rag.worker"])
    assert job.attributes["streaming_rag.status"] == "done"
    assert job.status.is_ok

    children = {name: by_name[name] for name in JOB_CHILDREN}
    for name, child in children.items():
        assert _parent(child) == _id(job), name
    wait, retrieval = children["streaming_rag.queue_wait"], children["streaming_rag.retrieval"]
    generation, publish = children["streaming_rag.generation"], children["streaming_rag.publish"]
    assert job.start_time is not None and job.end_time is not None
    assert wait.start_time == job.start_time  # the job's span starts when it was enqueued
    # ... at its enqueue time, which arq records in whole milliseconds (floored), and the
    # worker reads as a rounded wait: within 2 ms of the truth, so within the request
    assert post.start_time is not None and post.start_time - 2_000_000 <= job.start_time
    assert post.end_time is not None and job.start_time <= post.end_time
    assert wait.end_time is not None and retrieval.start_time is not None
    assert wait.end_time <= retrieval.start_time
    assert retrieval.attributes is not None and retrieval.attributes["streaming_rag.num_docs"] == 2
    assert retrieval.end_time is not None and generation.start_time is not None
    assert retrieval.end_time <= generation.start_time
    assert generation.attributes is not None
    assert generation.attributes["streaming_rag.chunks"] == len(ANSWER_WORDS)
    assert [e.name for e in generation.events] == ["first_token"]
    first_token = generation.events[0].timestamp
    assert generation.end_time is not None
    assert generation.start_time <= first_token <= generation.end_time
    # ... and the job's span ends after the last token was published and its end written
    assert publish.start_time is not None and publish.end_time is not None
    assert publish.start_time <= first_token
    assert publish.end_time <= job.end_time
    assert generation.end_time <= job.end_time
    assert _entry_ns(chunk_events[-1]) <= _entry_ns(events[-1]) <= job.end_time


class _FailingLLM:
    """Two tokens, then an error."""

    async def astream(self, prompt: str) -> Any:
        yield "a "
        yield "b "
        raise RuntimeError("model fell over")


async def test_a_failed_job_is_traced_as_an_error_under_the_submitting_span(
    redis_url, key_prefix, spans
):
    """Submitted by the async client in a span of the caller's (no bridge): the job span is its
    child, and the failure shows in the generation and job spans."""
    rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=0.1)
    try:
        async with running_worker(redis_url, key_prefix, make_rag(_FailingLLM())):
            with spans.provider.get_tracer("tests").start_as_current_span("caller") as caller:
                events = [e async for e in rag.astream_events("q")]
            by_name = await spans.wait_for({"caller", "streaming_rag.job", *JOB_CHILDREN})
    finally:
        await rag.aclose()
    assert events[-1].type == "error"
    job, generation = by_name["streaming_rag.job"], by_name["streaming_rag.generation"]
    assert _parent(job) == caller.get_span_context().span_id
    assert job.context is not None
    assert job.context.trace_id == caller.get_span_context().trace_id
    assert job.attributes is not None and job.attributes["streaming_rag.status"] == "failed"
    assert job.status.status_code is trace.StatusCode.ERROR
    assert generation.status.status_code is trace.StatusCode.ERROR
    assert "model fell over" in str(generation.status.description)
    assert [e.name for e in generation.events] == ["first_token"]
    assert generation.attributes is not None and generation.attributes["streaming_rag.chunks"] == 2
    assert by_name["streaming_rag.retrieval"].status.is_ok


async def test_without_a_tracer_provider_nothing_is_traced_and_nothing_breaks(
    redis_url, key_prefix
):
    """The API's default (no-op) provider: the same request works, and no context is sent."""
    assert trace.get_tracer_provider().__class__.__name__ == "ProxyTracerProvider"
    assert tracing.carrier() is None
    async with web_stack(redis_url, key_prefix) as stack:
        response = await stack.http.post("/answers", json={"query": "q"})
        assert response.status_code == 202, response.text
        async with stack.http.stream("GET", stack.url(response.json()["events_url"])) as stream:
            events = await messages(sse(stream))
    assert [m.event for m in events][-1] == "generation_done"
    assert sum(m.event == "chunk" for m in events) == len(ANSWER_WORDS)


async def test_submit_carries_the_callers_context_only_while_tracing(redis_url, key_prefix, spans):
    records: list[dict[str, Any]] = []
    client = StreamingRAGClient(redis_url, prefix=key_prefix)
    try:
        plan = client._plan("q", None, None)  # not submitted: the record it would queue
        records.append(unpack_job(plan.call.args[1]))
        with spans.provider.get_tracer("tests").start_as_current_span("caller") as caller:
            plan = client._plan("q", None, None)
            records.append(unpack_job(plan.call.args[1]))
    finally:
        client.close()
    untraced, traced = (r["k"]["request"] for r in records)
    assert untraced == {"v": 1, "query": "q", "context": None}  # the record as before
    ctx = caller.get_span_context()
    assert traced["trace"]["traceparent"].startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")


def test_the_trace_field_round_trips_and_is_typed():
    carrier = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    request = parse_request("q", trace=carrier)
    assert unpack_job(arq_job_record("j", request, 0))["k"]["request"]["trace"] == carrier
    assert request_from_payload({"v": 1, "query": "q"}).trace is None  # old clients
    with pytest.raises(InvalidRequest, match="trace"):
        request_from_payload({"v": 1, "query": "q", "trace": {"traceparent": 1}})


def test_operations_doc_lists_every_span():
    """docs/operations.md, "Traces": one table row per span the worker makes, nothing else."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = doc.split("\n## Traces\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {m for row in rows for m in re.findall(r"`(streaming_rag\.\w+)`", row.split("|")[1])}
    assert named == {"streaming_rag.job", *JOB_CHILDREN}
    assert any(row.startswith("| `<METHOD> <route>`") for row in rows)  # the bridge's span
    assert "## Metrics" in doc.split("\n## Traces\n", 1)[0]  # next to the metrics
