"""Time to first token: submit -> first CHUNK at a subscriber, vs in-process, in one run.

Queue path: `StreamingRAGClient.astream_events` (one SUBMIT round trip, then the client
follows the job's stream) against a worker in its own process (`bench._worker fast`).
In-process baseline: `StreamingRAG.astream_events` of the same app in this process. Both use
`bench.apps:instant_app` (instant retrieval and LLM), one job at a time with a small random
pause between jobs; each answer is read to its end. Time = `perf_counter()` from just before
the call to the arrival of the first CHUNK. Added latency = queue minus in-process, per
percentile (p50 - p50, p99 - p99). `--runs` (3) alternates the two paths (the worker process
stays up); the figures are the medians of the runs' percentiles, with their spreads.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from typing import Any

from streaming_rag import EventType, StreamingRAG
from streaming_rag_client import StreamingRAGClient

from ._common import new_prefix, percentiles, server, worker_process
from ._tools import drop_prefix, emit_json, scorecard, spread, verdict
from .apps import instant_app

APP = "bench.apps:instant_app"
QUERY = "what is the time to first token? tokens=20"
TARGET_P50_MS, TARGET_P99_MS = 1.5, 5.0
WARMUP = 5


async def _first_chunk_ms(events: Any) -> float:
    """ms from now until `events` yields its first CHUNK; drains the rest."""
    t0 = time.perf_counter()
    first = None
    async for event in events:
        if first is None and event.type is EventType.CHUNK:
            first = (time.perf_counter() - t0) * 1000
    if first is None:
        raise RuntimeError("the answer had no CHUNK event")
    return first


async def _series(make_events: Any, jobs: int, jitter_s: float) -> list[float]:
    rng = random.Random(11)
    for _ in range(WARMUP):
        await _first_chunk_ms(make_events())
    samples = []
    for _ in range(jobs):
        await asyncio.sleep(rng.uniform(0, jitter_s))
        samples.append(await _first_chunk_ms(make_events()))
    return samples


async def _queue(url: str, prefix: str, jobs: int, jitter_s: float) -> list[float]:
    async with StreamingRAGClient(url, prefix=prefix) as rag:
        return await _series(lambda: rag.astream_events(QUERY), jobs, jitter_s)


async def _in_process(app: StreamingRAG, jobs: int, jitter_s: float) -> list[float]:
    return await _series(lambda: app.astream_events(QUERY), jobs, jitter_s)


def measure(jobs: int, jitter_s: float, runs: int) -> dict[str, Any]:
    queued: list[dict[str, float]] = []
    local: list[dict[str, float]] = []
    with server() as (url, where):
        prefix = new_prefix("ttft")
        try:
            with worker_process(url, prefix, APP, kind="fast"):
                for _ in range(runs):  # alternating, so both paths see the same machine
                    queued.append(percentiles(asyncio.run(_queue(url, prefix, jobs, jitter_s))))
                    series = asyncio.run(_in_process(instant_app(), jobs, jitter_s))
                    local.append(percentiles(series))
        finally:
            drop_prefix(url, prefix)
    added = {
        k: [q[k] - loc[k] for q, loc in zip(queued, local, strict=True)] for k in ("p50", "p99")
    }
    med = {k: statistics.median(v) for k, v in added.items()}
    ok = med["p50"] <= TARGET_P50_MS and med["p99"] <= TARGET_P99_MS
    return {
        "server": where,
        "jobs": jobs,
        "runs": runs,
        "queue_ms": queued,
        "in_process_ms": local,
        "added_ms": med,
        "added_ms_runs": added,
        "target_ms": {"p50": TARGET_P50_MS, "p99": TARGET_P99_MS},
        "verdict": verdict(ok),
    }


def _print(r: dict[str, Any]) -> None:
    print(
        f"ttft: submit -> first CHUNK at a subscriber, ms ({r['server']}; {r['jobs']} jobs per "
        f"path per run, {r['runs']} alternating runs: median [min-max])"
    )
    print(f"{'path':<22}{'p50':>22}{'p99':>22}")
    for name, key in (("queue (worker proc)", "queue_ms"), ("in-process", "in_process_ms")):
        rows = r[key]
        p50 = spread([x["p50"] for x in rows], "{:.3f}")
        p99 = spread([x["p99"] for x in rows], "{:.3f}")
        print(f"{name:<22}{p50:>22}{p99:>22}")
    a = r["added_ms_runs"]
    p50, p99 = spread(a["p50"], "{:.2f}"), spread(a["p99"], "{:.2f}")
    print(
        f"added by the queue: p50 {p50} ms, p99 {p99} ms; target p50 <= "
        f"{TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms: {r['verdict']}"
    )


def _record(r: dict[str, Any]) -> None:
    a = r["added_ms_runs"]
    local = spread([x["p50"] for x in r["in_process_ms"]], "{:.2f}")
    scorecard(
        "added TTFT p50 / p99 (ms)",
        f"{spread(a['p50'])} / {spread(a['p99'])}",
        f"in-process p50 {local}",
        f"p50 <= {TARGET_P50_MS:g}, p99 <= {TARGET_P99_MS:g}",
        r["verdict"] == "PASS",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ttft", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="sequential jobs per path (200)")
    parser.add_argument("--jitter-ms", type=float, default=2.0, help="max pause between jobs")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per path (3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.runs < 1:
        parser.error("--jobs and --runs must be >= 1")
    result = measure(args.jobs, args.jitter_ms / 1000, args.runs)
    _record(result)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0
