"""Time to first token: submit -> first CHUNK at a subscriber, vs in-process, in one run.

Queue path: `StreamingRAGClient.astream_events` (one SUBMIT round trip, then the client
follows the job's stream) against a worker in its own process (`bench._worker fast`).
In-process baseline: `StreamingRAG.astream_events` of the same app in this process. Both use
`bench.apps:instant_app` (instant retrieval and LLM), one job at a time with a small random
pause between jobs; each answer is read to its end. Time = `perf_counter()` from just before
the call to the arrival of the first CHUNK. Added latency = queue minus in-process, per
percentile (p50 - p50, p99 - p99).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from streaming_rag import EventType, StreamingRAG
from streaming_rag_client import StreamingRAGClient

from ._common import new_prefix, percentiles, server, worker_process
from ._tools import drop_prefix, emit_json, verdict
from .apps import instant_app

APP = "bench.apps:instant_app"
QUERY = "what is the time to first token? tokens=20"
TARGET_P50_MS, TARGET_P99_MS = 5.0, 15.0
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


def measure(jobs: int, jitter_s: float) -> dict[str, Any]:
    with server() as (url, where):
        prefix = new_prefix("ttft")
        try:
            with worker_process(url, prefix, APP, kind="fast"):
                queued = percentiles(asyncio.run(_queue(url, prefix, jobs, jitter_s)))
        finally:
            drop_prefix(url, prefix)
    local = percentiles(asyncio.run(_in_process(instant_app(), jobs, jitter_s)))
    added = {"p50": queued["p50"] - local["p50"], "p99": queued["p99"] - local["p99"]}
    ok = added["p50"] <= TARGET_P50_MS and added["p99"] <= TARGET_P99_MS
    return {
        "server": where,
        "jobs": jobs,
        "queue_ms": queued,
        "in_process_ms": local,
        "added_ms": added,
        "target_ms": {"p50": TARGET_P50_MS, "p99": TARGET_P99_MS},
        "verdict": verdict(ok),
    }


def _print(r: dict[str, Any]) -> None:
    print(f"ttft: submit -> first CHUNK at a subscriber, ms ({r['server']})")
    print(f"{'path':<22}{'jobs':>6}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, key in (("queue (worker proc)", "queue_ms"), ("in-process", "in_process_ms")):
        row = r[key]
        print(f"{name:<22}{row['n']:>6.0f}{row['p50']:>9.3f}{row['p99']:>9.3f}{row['mean']:>9.3f}")
    a = r["added_ms"]
    print(
        f"added by the queue: p50 {a['p50']:.3f} ms, p99 {a['p99']:.3f} ms; target p50 <= "
        f"{TARGET_P50_MS:g} ms, p99 <= {TARGET_P99_MS:g} ms: {r['verdict']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench ttft", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="sequential jobs per path (200)")
    parser.add_argument("--jitter-ms", type=float, default=2.0, help="max pause between jobs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    result = measure(args.jobs, args.jitter_ms / 1000)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0
