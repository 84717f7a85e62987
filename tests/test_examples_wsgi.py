"""examples/django_sse and examples/flask_sse, each on a real server (a subprocess on a free
127.0.0.1 port) with a real worker subprocess, over httpx: the same SSE framing and
resume-exactly semantics as the Starlette bridge (`streaming_rag_client.sse`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streaming_rag_client import StreamingRAGClient
from streaming_rag_client.sse import RETRY_MS
from tests.helpers_queue import ROOT, spawn_worker, wait_until
from tests.helpers_web import Message, as_messages

WAIT_S = 30.0  # liveness guard only
EXAMPLES = ROOT / "examples"
TERMINAL = {"generation_done", "error"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(framework: str, port: int) -> tuple[list[str], Path]:
    if framework == "django":
        args = ["app.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        return [sys.executable, *args], EXAMPLES / "django_sse"
    args = ["--app", "app", "run", "--host", "127.0.0.1", "--port", str(port), "--no-reload"]
    return [sys.executable, "-m", "flask", *args], EXAMPLES / "flask_sse"


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def example_server(framework: str, redis_url: str, prefix: str, log: Path) -> Iterator[str]:
    """The example served on a free loopback port; yields its origin, stops it on exit."""
    pytest.importorskip(framework)
    port = free_port()
    args, cwd = command(framework, port)
    env = {**os.environ, "REDIS_URL": redis_url, "STREAMING_RAG_PREFIX": prefix}
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: proc.poll() is not None or listening(port), f"{framework} up", WAIT_S)
        assert proc.poll() is None, f"{framework} example exited:\n{log.read_text()}"
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(WAIT_S)


@pytest.fixture
def worker(redis_url: str, key_prefix: str) -> Iterator[None]:
    proc = spawn_worker(redis_url, key_prefix, "tests.queue_apps:words_app")
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=WAIT_S)


def sse(response: httpx.Response) -> Iterator[Message]:
    """Parse an SSE body strictly: `retry: RETRY_MS` first, then `event`/`id`/`data` messages
    (comments skipped); fails on unknown fields and on a message cut off at the end."""
    assert response.status_code == 200, response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    lines = response.iter_lines()
    assert next(lines) == f"retry: {RETRY_MS}"
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                payload = json.loads("\n".join(data))
                yield Message(fields.get("event", "message"), fields.get("id"), payload)
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            assert name in ("event", "id", "data"), f"unknown SSE field {line!r}"
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
    assert not fields and not data, f"stream ended inside a message: {fields} {data}"


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("framework", ["django", "flask"])
def test_disconnect_after_3_events_and_resume_with_last_event_id_exactly(
    framework: str, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with (
        example_server(framework, redis_url, key_prefix, log) as origin,
        httpx.Client(base_url=origin, timeout=WAIT_S) as http,
        StreamingRAGClient(redis_url, prefix=key_prefix) as rag,
    ):
        response = http.post("/answers", json={"query": "What is RAG?"})
        assert response.status_code == 202, response.text
        body = response.json()
        job_id, events_url = body["job_id"], body["events_url"]
        assert body == {"job_id": job_id, "events_url": f"/answers/{job_id}/events"}

        first: list[Message] = []
        with http.stream("GET", events_url) as stream:  # leaving it mid-body: a disconnect
            for message in sse(stream):
                first.append(message)
                if len(first) == 3:
                    break
        last = first[-1].id
        assert last is not None
        with http.stream("GET", events_url, headers={"Last-Event-ID": last}) as stream:
            rest = list(sse(stream))
        with http.stream("GET", events_url) as stream:
            replay = list(sse(stream))
        reference = as_messages(list(rag.events(job_id)))

        union = first + rest
        assert [m.id for m in union] == [m.id for m in replay] == [m.id for m in reference]
        assert union == replay == reference  # ids, events, data and latency: exactly
        assert sum(m.event in TERMINAL for m in union) == 1
        assert union[-1].event == "generation_done"

        # resuming at the terminal entry: nothing left (204, an EventSource stops there)
        done = http.get(events_url, headers={"Last-Event-ID": reference[-1].id})
        assert done.status_code == 204, log.read_text()
        # Last-Event-ID wins over ?after=
        headers = {"Last-Event-ID": reference[-2].id}
        with http.stream("GET", events_url, params={"after": "0-0"}, headers=headers) as stream:
            assert list(sse(stream)) == reference[-1:]
        bad = http.get(events_url, params={"after": "not-an-id"})
        assert bad.status_code == 422
        assert bad.json()["detail"].startswith("after must be a stream entry id")
        assert http.get("/answers/nosuchjob/events").status_code == 404
