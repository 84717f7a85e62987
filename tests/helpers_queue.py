"""Running a real worker (in this process, or as a subprocess) against the test server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from streaming_rag import StreamingRAG
from streaming_rag_worker import WorkerConfig, build_worker
from streaming_rag_worker.runner import StreamingWorker

ROOT = Path(__file__).resolve().parent.parent
EVENTS_URL_VAR = "STREAMING_RAG_EVENTS_URL"


async def until(predicate: Any, what: str, timeout_s: float = 30.0) -> None:
    """Wait (bounded) for a server-side condition that no event announces: `await
    predicate()` is polled every 20 ms; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll a sync `condition` (short, growing backoff) until it holds; fail after
    `timeout_s` naming `what` (for server states no event announces)."""
    deadline = time.monotonic() + timeout_s
    backoff = 0.01
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(backoff)
        backoff = min(backoff * 2, 0.2)


@contextlib.asynccontextmanager
async def running_worker(
    redis_url: str, prefix: str, rag: StreamingRAG, **config: Any
) -> AsyncIterator[StreamingWorker]:
    """An arq worker serving `rag` in this event loop; stopped (grace 0) on exit. Its events
    go where `$STREAMING_RAG_EVENTS_URL` says (the tests' cluster mode) unless `config` says."""
    config.setdefault("events_url", os.environ.get(EVENTS_URL_VAR) or None)
    cfg = WorkerConfig(redis_url=redis_url, prefix=prefix, **config)
    worker = build_worker(cfg, rag=rag, handle_signals=False, poll_delay=0.05)
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        await worker.stop(0)
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def spawn_worker(redis_url: str, prefix: str, app: str, **config: Any) -> subprocess.Popen[bytes]:
    """`streaming-rag worker` in a subprocess (the CLI when present, else arq's runner). Its
    events go where `$STREAMING_RAG_EVENTS_URL` says unless `config` says."""
    config.setdefault("events_url", os.environ.get(EVENTS_URL_VAR) or None)
    args = [
        sys.executable,
        "-c",
        "import json, sys; from streaming_rag_worker import WorkerConfig, build_worker; "
        "build_worker(WorkerConfig(**json.loads(sys.argv[1])), poll_delay=0.05).run()",
        json.dumps({"redis_url": redis_url, "prefix": prefix, "app": app, **config}),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the tests' own apps (tests.queue_apps)
    return subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.PIPE)
