"""Prometheus metrics: a real worker's (and the bridge's) `/metrics` endpoint, scraped with
httpx while jobs run through the client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streaming_rag.exceptions import WorkerConfigError
from streaming_rag_client import StreamingRAGClient
from streaming_rag_worker import WorkerConfig
from streaming_rag_worker.metrics import INSTALL_HINT, LATENCY_BUCKETS
from streaming_rag_worker.runner import StreamingWorker
from tests.helpers_queue import ROOT, running_worker, until
from tests.queue_apps import ANSWER_WORDS, GatedLLM, make_rag


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def metrics_port(worker: StreamingWorker) -> int:
    """The port an in-process worker's metrics are bound to, once it has started."""

    async def bound() -> bool:
        runtime = worker.runtime
        return runtime._state is not None and bool(runtime.state.metrics.port)

    await until(bound, "the worker's metrics to be served", timeout_s=30)
    return int(worker.runtime.state.metrics.port or 0)


def cli_process(argv: list[str], log: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`streaming-rag *argv` in a subprocess (finding the tests' own apps), output to `log`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        command = [sys.executable, "-m", "streaming_rag_cli", *argv]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_job_moves_every_job_metric_by_its_amounts(redis_url, key_prefix):
    async with running_worker(redis_url, key_prefix, make_rag(), metrics_port=0) as worker:
        port = await metrics_port(worker)
        before = await scrape(port)
        assert value(before, "streaming_rag_jobs_total", status="done", stage="") == 0
        assert value(before, "streaming_rag_active_jobs") == 0
        rag = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            events = [e async for e in rag.astream_events("what is rag?")]
        finally:
            await rag.aclose()
        chunks = [e for e in events if e.is_chunk]
        assert len(chunks) == len(ANSWER_WORDS)

        async def counted() -> bool:  # the count follows the terminal event's write
            samples = await scrape(port)
            return value(samples, "streaming_rag_jobs_total", status="done", stage="") == 1

        await until(counted, "jobs_total{status=done} to reach 1", timeout_s=10)
        m = await scrape(port)
    assert value(m, "streaming_rag_tokens_total") == len(chunks)
    assert value(m, "streaming_rag_events_total", type="chunk") == len(chunks)
    for lifecycle in ("retrieval_start", "retrieval_done", "generation_start"):
        assert value(m, "streaming_rag_events_total", type=lifecycle) == 1
    assert value(m, "streaming_rag_active_jobs") == 0
    assert value(m, "streaming_rag_pickup_latency_seconds_count") == 1
    assert value(m, "streaming_rag_ttft_seconds_count") == 1
    assert 0 < value(m, "streaming_rag_ttft_seconds_sum") < 10
    # every event the client saw went out in the flushes, each flush one round trip
    flushes = value(m, "streaming_rag_publish_batch_events_count")
    assert value(m, "streaming_rag_publish_batch_events_sum") == len(events)
    assert 1 <= flushes <= len(events)
    assert value(m, "streaming_rag_publish_round_trip_seconds_count") == flushes
    # millisecond buckets, and no failure of any stage
    assert value(m, "streaming_rag_ttft_seconds_bucket", le="0.001") <= 1
    assert LATENCY_BUCKETS[0] == 0.001
    assert not [k for k in m if k[0] == "streaming_rag_jobs_total" and k[1][1][1] != "done"]
    assert value(m, "streaming_rag_queue_jobs") == 0
    assert value(m, "streaming_rag_queue_waiting_jobs") == 0


async def test_queue_gauges_tell_waiting_from_running_and_failures_count_by_stage(
    redis_url, key_prefix
):
    llm = GatedLLM(first=1)
    rag_app = make_rag(llm)
    async with running_worker(
        redis_url, key_prefix, rag_app, metrics_port=0, concurrency=1
    ) as worker:
        port = await metrics_port(worker)
        rag = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            running = await rag.asubmit("first")

            async def started() -> bool:
                return llm.started.is_set()

            await until(started, "the first job to run")
            waiting = await rag.asubmit("second")
            m = await scrape(port)
            assert value(m, "streaming_rag_queue_jobs") == 2
            assert value(m, "streaming_rag_queue_waiting_jobs") == 1
            assert 0 <= value(m, "streaming_rag_queue_oldest_waiting_age_seconds") < 30
            assert value(m, "streaming_rag_active_jobs") == 1
            assert await rag.acancel(running)
            assert await rag.acancel(waiting)

            async def ended() -> bool:
                m = await scrape(port)
                cancelled = value(
                    m, "streaming_rag_jobs_total", status="cancelled", stage="generation"
                )
                return cancelled == 1 and value(m, "streaming_rag_active_jobs") == 0

            await until(ended, "the running job to count as cancelled", timeout_s=10)
        finally:
            await rag.aclose()


async def test_unknown_paths_and_methods_are_refused(redis_url, key_prefix):
    async with running_worker(redis_url, key_prefix, make_rag(), metrics_port=0) as worker:
        port = await metrics_port(worker)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/")).status_code == 404
            assert (await http.post(f"http://127.0.0.1:{port}/metrics")).status_code == 405


async def test_a_worker_process_serves_metrics_on_its_port_and_stops_with_it(
    redis_url, key_prefix, tmp_path
):
    """`streaming-rag worker --metrics-port N`, the command itself."""
    port = free_port()
    argv = ["worker", "--app", "tests.queue_apps:words_app", "--metrics-port", str(port)]
    argv += ["--redis-url", redis_url, "--prefix", key_prefix]
    proc, log = cli_process(argv, tmp_path / "worker.log")
    try:

        async def serving() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                await scrape(port)
            except httpx.TransportError:
                return False
            return True

        await until(serving, "the worker process's /metrics", timeout_s=30)
        rag = StreamingRAGClient(redis_url, prefix=key_prefix)
        try:
            chunks = [c async for c in rag.astream("q")]
        finally:
            await rag.aclose()

        async def counted() -> bool:
            m = await scrape(port)
            return value(m, "streaming_rag_jobs_total", status="done", stage="") == 1

        await until(counted, "the process's jobs_total{status=done} to reach 1", timeout_s=10)
        assert value(await scrape(port), "streaming_rag_tokens_total") == len(chunks)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with pytest.raises(httpx.TransportError):
        await scrape(port)


def test_config_checks_the_port_and_names_the_extra(monkeypatch):
    assert WorkerConfig().metrics_port is None
    assert WorkerConfig.from_env({"STREAMING_RAG_METRICS_PORT": "9109"}).metrics_port == 9109
    with pytest.raises(WorkerConfigError, match="metrics_port"):
        WorkerConfig(metrics_port=70000)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(WorkerConfigError) as info:
        WorkerConfig(metrics_port=9109)
    assert str(info.value) == INSTALL_HINT
    assert 'pip install "streaming-rag[metrics]"' in INSTALL_HINT
    WorkerConfig()  # no metrics: prometheus-client is not needed


def test_the_cli_refuses_metrics_without_prometheus_in_one_line(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\nsys.modules['prometheus_client'] = None\n")
    proc = subprocess.run(
        [sys.executable, "-m", "streaming_rag_cli", "worker", "--metrics-port", "9109"],
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"streaming-rag worker: error: {INSTALL_HINT}", proc.stderr


async def test_the_bridge_counts_sse_streams_subscribers_and_delivered_messages(
    redis_url, key_prefix
):
    pytest.importorskip("starlette")
    from streaming_rag_client.metrics import BridgeMetrics
    from tests.helpers_web import WAIT_S, Message, messages, sse, web_stack

    llm = GatedLLM()
    metrics = BridgeMetrics()
    port = metrics.serve(0)
    try:
        async with web_stack(redis_url, key_prefix, llm, metrics=metrics) as stack:
            assert stack.app.state.metrics is metrics
            response = await stack.http.post("/answers", json={"query": "What is RAG?"})
            events_url = stack.url(response.json()["events_url"])
            live = asyncio.Semaphore(0)

            async def reader() -> list[Message]:
                out: list[Message] = []
                async with stack.http.stream("GET", events_url) as stream:
                    items = sse(stream)
                    async for item in items:
                        if isinstance(item, Message):
                            out.append(item)
                            if item.data["data"] == "t1 ":
                                break
                    live.release()  # both streams are open and waiting for live events
                    out += await messages(items)
                return out

            readers = [asyncio.create_task(reader()) for _ in range(2)]
            for _ in readers:
                await asyncio.wait_for(live.acquire(), WAIT_S)
            m = await scrape(port)
            assert value(m, "streaming_rag_sse_streams") == 2
            assert value(m, "streaming_rag_sse_watched_jobs") == 1
            assert value(m, "streaming_rag_sse_max_subscribers_per_job") == 2
            assert llm.release is not None
            llm.release.set()
            results = await asyncio.wait_for(asyncio.gather(*readers), WAIT_S)

            async def closed() -> bool:
                return value(await scrape(port), "streaming_rag_sse_streams") == 0

            await until(closed, "both SSE streams to close", timeout_s=10)
            m = await scrape(port)
    finally:
        metrics.close()
    assert [len(r) for r in results] == [len(results[0])] * 2
    delivered = sum(len(r) for r in results)
    chunk_messages = sum(1 for r in results for msg in r if msg.event == "chunk")
    assert chunk_messages == 2 * 3  # "t0 ", "t1 ", "end" per stream
    counted = sum(v for (name, _), v in m.items() if name == "streaming_rag_sse_messages_total")
    assert counted == delivered
    assert value(m, "streaming_rag_sse_messages_total", type="chunk") == chunk_messages
    assert value(m, "streaming_rag_sse_streams_opened_total") == 2
    assert value(m, "streaming_rag_sse_watched_jobs") == 0
    assert value(m, "streaming_rag_sse_subscribers_per_job_count") == 2
    assert value(m, "streaming_rag_sse_subscribers_per_job_sum") == 1 + 2
    with pytest.raises(httpx.TransportError):
        await scrape(port)


def test_create_app_metrics_are_off_by_default_and_never_on_its_routes():
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from streaming_rag_client.web import create_app

    rag = StreamingRAGClient("redis://127.0.0.1:1/0")
    assert create_app(rag).state.metrics is None
    app = create_app(rag, metrics=True)
    assert app.state.metrics is not None
    with TestClient(app) as http:
        assert http.get("/metrics").status_code == 404


def test_docs_list_every_metric_and_a_query_for_each():
    import re

    from streaming_rag_client.metrics import BridgeMetrics
    from streaming_rag_worker.metrics import WorkerMetrics

    names = set()
    for registry in (WorkerMetrics().registry, BridgeMetrics().registry):
        for family in registry.collect():
            suffix = "_total" if family.type == "counter" else ""
            names.add(family.name + suffix)
    text = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `streaming_rag_")]
    documented = {re.match(r"\| `(streaming_rag_\w+)", row).group(1) for row in rows}
    assert documented == names
    for row in rows:
        query = row.rstrip(" |").rsplit("|", 1)[1]
        name = re.match(r"\| `(streaming_rag_\w+)", row).group(1)
        assert name in query, f"{name}: its sample query does not use it: {query}"


async def test_a_dropped_connection_counts_as_a_redis_reconnect(redis_url, key_prefix):
    from urllib.parse import urlsplit

    from tests.faults import TcpProxy

    url = urlsplit(redis_url)
    if url.scheme != "redis" or url.port is None or url.password or url.username:
        pytest.skip(f"needs a plain redis://host:port server to proxy, not {url.scheme}://")
    db = int(url.path.strip("/") or 0)
    with TcpProxy(url.port, target_host=url.hostname or "127.0.0.1") as proxy:
        async with running_worker(proxy.url(db=db), key_prefix, make_rag(), metrics_port=0) as w:
            port = await metrics_port(w)

            def reconnects(m: dict) -> float:
                name = "streaming_rag_redis_reconnects_total"
                return sum(v for (n, _), v in m.items() if n == name)

            rag = StreamingRAGClient(redis_url, prefix=key_prefix)
            try:  # a job first: the worker is back in its blocking wait for the next one
                assert len([c async for c in rag.astream("q")]) == len(ANSWER_WORDS)
            finally:
                await rag.aclose()
            assert reconnects(await scrape(port)) == 0
            assert proxy.cut() >= 1

            async def counted() -> bool:
                return reconnects(await scrape(port)) >= 1

            await until(counted, "a reconnect to be counted", timeout_s=20)
            m = await scrape(port)
            components = {
                dict(labels)["component"]
                for (n, labels), v in m.items()
                if n == "streaming_rag_redis_reconnects_total" and v
            }
            assert components <= {"job pickup", "publishing events", "cancel listener", "sweep"}
            rag = StreamingRAGClient(redis_url, prefix=key_prefix)
            try:  # and the worker still serves
                assert len([c async for c in rag.astream("q2")]) == len(ANSWER_WORDS)
            finally:
                await rag.aclose()


async def test_serve_puts_the_bridge_metrics_on_a_port_of_their_own(
    redis_url, key_prefix, tmp_path
):
    """`streaming-rag serve --metrics-port N`: the metrics there, never on the bridge's port."""
    pytest.importorskip("uvicorn")
    port, mport = free_port(), free_port()
    argv = ["serve", "--port", str(port), "--metrics-port", str(mport)]
    argv += ["--redis-url", redis_url, "--prefix", key_prefix]
    proc, log = cli_process(argv, tmp_path / "serve.log")
    try:

        async def serving() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    await http.get(f"http://127.0.0.1:{port}/")
                await scrape(mport)
            except httpx.TransportError:
                return False
            return True

        await until(serving, "serve and its metrics", timeout_s=30)
        m = await scrape(mport)
        assert ("streaming_rag_sse_streams", ()) in m
        assert value(m, "streaming_rag_sse_streams_opened_total") == 0
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/metrics")).status_code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(httpx.TransportError):
        await scrape(mport)
