"""Shared by the queue benchmarks: a server to run against, workers in subprocesses, stats."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def server() -> Iterator[tuple[str, str]]:
    """Yield `(url, description)`: `$REDIS_URL` when set, else an embedded Valkey."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url, f"REDIS_URL ({_version(url)})"
        return
    from streaming_rag_cli.embedded import EmbeddedValkey

    with EmbeddedValkey() as embedded:
        yield embedded.url, f"embedded {_version(embedded.url)}"


def _version(url: str) -> str:
    info: dict[str, Any] = redis.Redis.from_url(url).info("server")  # type: ignore[assignment]
    if "valkey_version" in info:
        return f"valkey {info['valkey_version']}"
    return f"redis {info.get('redis_version', '?')}"


def new_prefix(name: str) -> str:
    return f"bench-{name}-{uuid.uuid4().hex[:6]}"


@contextlib.contextmanager
def worker_process(
    url: str,
    prefix: str,
    app: str,
    *,
    kind: str = "fast",
    log: Path | None = None,
    env: dict[str, str] | None = None,
    **config: Any,
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker in a subprocess (`kind` "fast": ours; "stock": arq's own `Worker` and poll
    loop with our job function), stopped with SIGTERM at the end. Its stdout and stderr go
    to `log` (appended) when given, else nowhere; `env` adds to its environment."""
    spec = {"redis_url": url, "prefix": prefix, "app": app, **config}
    sink = open(log, "ab") if log is not None else None  # noqa: SIM115 (closed below)
    out = sink if sink is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._worker", kind, json.dumps(spec)],
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)},
        stdout=out,
        stderr=out,
    )
    try:
        _wait_ready(url, prefix)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if sink is not None:
            sink.close()


def _wait_ready(url: str, prefix: str, timeout_s: float = 30.0) -> None:
    """Wait for the worker's readiness key (set by `bench._worker` after startup)."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    while not client.exists(f"{prefix}:bench-ready"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker for {prefix} did not start within {timeout_s} s")
        time.sleep(0.05)
    client.close()


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99, mean and count of `values`."""
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50": statistics.median(ordered),
        "p99": p99,
        "mean": statistics.fmean(ordered),
        "n": float(len(ordered)),
    }


def cpu_seconds(pid: int) -> float:
    """CPU seconds a process (all its threads) has run so far, to the nanosecond
    (`/proc/<pid>/schedstat`; `/proc/<pid>/stat` counts only 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def server_cpu_seconds(url: str) -> float:
    """The server's own user + system CPU seconds (INFO cpu)."""
    info: dict[str, Any] = redis.Redis.from_url(url).info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
