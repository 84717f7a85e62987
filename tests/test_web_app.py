"""The HTTP bridge's refusals (404, 422) and its setup (environment, lifespan, mounting,
imports), over real connections: uvicorn on loopback, an in-process worker, httpx."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import redis.asyncio

from streaming_rag.wire import DEFAULT_MAX_QUERY_CHARS
from streaming_rag_client import InvalidRequest, JobNotFound, StreamingRAGClient
from streaming_rag_client.web import create_app
from tests.helpers_web import serving, web_stack


@pytest.mark.parametrize("job_id", ["no-such-job", "not%20a%20valid%20id"])
async def test_unknown_jobs_are_404_on_every_job_route(redis_url, key_prefix, job_id):
    async with web_stack(redis_url, key_prefix) as stack:
        expected = str(JobNotFound(job_id.replace("%20", " "), key_prefix))
        for method, path in [
            ("GET", f"/answers/{job_id}/events"),
            ("GET", f"/answers/{job_id}"),
            ("DELETE", f"/answers/{job_id}"),
        ]:
            response = await stack.http.request(method, path)
            assert response.status_code == 404, (method, path)
            assert response.json() == {"detail": expected}
            assert response.headers["content-type"] == "application/json"


INVALID_FOR_THE_CLIENT = [  # (query, context): the client itself refuses these
    (None, None),
    ("", None),
    ("   ", None),
    (42, None),
    ("ok", ["not", "a", "dict"]),
    ("x" * (DEFAULT_MAX_QUERY_CHARS + 1), None),
]


@pytest.mark.parametrize(("query", "context"), INVALID_FOR_THE_CLIENT)
async def test_invalid_requests_are_422_with_the_clients_message(
    redis_url, key_prefix, query, context
):
    async with web_stack(redis_url, key_prefix) as stack:
        with pytest.raises(InvalidRequest) as refused:
            await stack.rag.asubmit(query, context)
        body = {"context": context} if context is not None else {}
        if query is not None:
            body["query"] = query
        response = await stack.http.post("/answers", json=body)
        assert response.status_code == 422
        assert response.json() == {"detail": str(refused.value)}
        await assert_nothing_queued(redis_url, key_prefix)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{not json", "request body must be JSON: "),
        (b"", "request body must be JSON: "),
        (b'["What is RAG?"]', "request body must be a JSON object like "),
        (b'{"query": "ok", "job_id": "mine"}', "unknown fields ['job_id']: expected query"),
    ],
)
async def test_malformed_bodies_are_422(redis_url, key_prefix, content, detail):
    async with web_stack(redis_url, key_prefix) as stack:
        headers = {"content-type": "application/json"}
        response = await stack.http.post("/answers", content=content, headers=headers)
        assert response.status_code == 422
        assert response.json()["detail"].startswith(detail)
        await assert_nothing_queued(redis_url, key_prefix)


async def assert_nothing_queued(redis_url: str, prefix: str) -> None:
    r = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await r.zcard(f"{prefix}:queue") == 0
        keys = {k.decode() async for k in r.scan_iter(match=f"*{prefix}*")}
        worker_own = {f"{prefix}:health-check", f"{prefix}:sweep-lock"}
        assert keys <= worker_own  # no job, no wake token
    finally:
        await r.aclose()


async def test_unmounted_app_from_the_environment_serves_and_closes_its_client(
    redis_url, key_prefix, monkeypatch
):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("STREAMING_RAG_PREFIX", key_prefix)
    app = create_app()  # what `streaming-rag serve` builds: settings from the environment
    rag: StreamingRAGClient = app.state.rag
    assert (rag.url, rag.prefix, rag.start_timeout) == (redis_url, key_prefix, 30.0)
    async with serving(app) as origin, httpx.AsyncClient(base_url=origin) as http:
        response = await http.post("/answers", json={"query": "q"})
        assert response.status_code == 202
        job_id = response.json()["job_id"]
        assert response.json()["events_url"] == f"/answers/{job_id}/events"
        page = await http.get("/")
        client_js = await http.get("/client.js")
        assert rag._async is not None  # the app's client is connected...
    assert rag._async is None  # ...and closed by the app's lifespan on shutdown
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<meta name="answers-url" content="/answers">' in page.text
    assert 'from "./client.js"' in page.text  # the page streams with the served client
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    assert client_js.status_code == 200
    assert client_js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert client_js.headers["cache-control"] == "public, max-age=300"
    assert "export function watch(" in client_js.text and "new EventSource(" in client_js.text
    assert "export async function submit(" in client_js.text
    assert "http://" not in client_js.text and "https://" not in client_js.text


def test_settings_and_a_client_together_are_refused(redis_url, key_prefix):
    with pytest.raises(TypeError, match="either a client or the settings"):
        create_app(StreamingRAGClient(redis_url), prefix=key_prefix)
    with pytest.raises(ValueError, match="keepalive_s must be > 0"):
        create_app(StreamingRAGClient(redis_url), keepalive_s=0)


def test_importing_client_does_not_need_starlette():
    code = (
        "import sys, client; "
        "print(','.join(m for m in ('starlette', 'uvicorn', 'client.web') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_sse_framing_is_one_line_of_json_per_event():
    from streaming_rag import EventType, StreamEvent
    from streaming_rag_client._sse import format_event

    chunk = StreamEvent(EventType.CHUNK, "two\nlines \u00e9", 0.5, "17-3")
    assert (
        format_event(chunk)
        == (
            'event: chunk\nid: 17-3\ndata: {"data":"two\\nlines \u00e9","latency":0.5}\n\n'
        ).encode()
    )
    done = StreamEvent(EventType.GENERATION_DONE, {"total_latency": 1.25}, 1.25, "18-0")
    assert format_event(done).decode().split("\n") == [
        "event: generation_done",
        "id: 18-0",
        'data: {"data":{"total_latency":1.25},"latency":1.25}',
        "",  # a blank line ends the message
        "",
    ]


def test_each_events_frame_is_encoded_once_and_the_cache_is_bounded():
    from streaming_rag import EventType, StreamEvent
    from streaming_rag_client import _sse

    first = StreamEvent(EventType.CHUNK, "a", 0.1, "20-0")
    frame = _sse.format_event(first)
    assert _sse.format_event(first) is frame  # every watcher of the job gets the same bytes
    twin = StreamEvent(EventType.CHUNK, "a", 0.1, "20-0")
    assert _sse.format_event(twin) == frame  # another object: encoded again, same bytes
    other = StreamEvent(EventType.CHUNK, "b", 0.2, "20-1")
    assert _sse.format_event(other) != frame
    no_id = StreamEvent(EventType.CHUNK, "c", 0.3, None)
    before = len(_sse._frames)
    assert b"id:" not in _sse.format_event(no_id)
    assert len(_sse._frames) == before  # only events with an id are remembered
    many = [
        StreamEvent(EventType.CHUNK, str(i), 0.0, f"21-{i}")
        for i in range(_sse.FRAME_CACHE_SIZE + 50)
    ]
    for event in many:
        _sse.format_event(event)
    assert len(_sse._frames) <= _sse.FRAME_CACHE_SIZE
    assert id(first) not in _sse._frames or _sse._frames[id(first)][0] is not first  # evicted
    assert _sse.format_event(many[-1]) is _sse.format_event(many[-1])
