"""Pickup latency: submit → the job's code starts, ours vs stock arq, in one run.

One job at a time (the queue is empty at each submit), each job's retriever stamping
`time.time()` when it starts; pickup = stamp - the moment before `submit()` was called.
Both workers run in their own process against the same server, with the same job function.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from streaming_rag import EventType
from streaming_rag_client import StreamingRAGClient

from ._common import new_prefix, percentiles, server, worker_process

TARGET_P50_MS, TARGET_P99_MS = 1.5, 5.0


def measure(
    url: str, kind: str, jobs: int, jitter_s: float, settle_s: float = 0.0
) -> dict[str, float]:
    """Pickup percentiles (ms) of `jobs` jobs, one at a time, each submitted after an idle
    `settle_s` plus a random 0-`jitter_s` (the same idle the peers' drivers give theirs)."""
    prefix = new_prefix(f"pickup-{kind}")
    samples: list[float] = []
    rng = random.Random(7)
    with (
        worker_process(url, prefix, "bench.apps:stamp_app", kind=kind),
        StreamingRAGClient(url, prefix=prefix) as rag,
    ):
        for _ in range(3):  # warm-up: connections, scripts, imports
            list(rag.stream_events("warm-up"))
        for _ in range(jobs):
            # submit at a random phase of a polling worker's cycle, not right after a job
            time.sleep(settle_s + rng.uniform(0, jitter_s))
            before = time.time()
            job_id = rag.submit("pickup")
            for event in rag.events(job_id):
                if event.type is EventType.RETRIEVAL_DONE:
                    samples.append((event.data["docs"][0]["t"] - before) * 1000)
    return percentiles(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pickup", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="jobs for our worker (200)")
    parser.add_argument("--stock-jobs", type=int, default=40, help="jobs for stock arq (40)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    with server() as (url, where):
        ours = measure(url, "fast", args.jobs, 0.002)
        stock = measure(url, "stock", args.stock_jobs, 0.5)  # arq polls every 0.5 s
    result: dict[str, Any] = {"server": where, "ours_ms": ours, "stock_arq_ms": stock}
    result["speedup_p50"] = stock["p50"] / ours["p50"]
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"pickup: submit -> job code starts, ms ({where})")
    print(f"{'worker':<12}{'jobs':>6}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, row in (("ours", ours), ("stock arq", stock)):
        print(f"{name:<12}{row['n']:>6.0f}{row['p50']:>9.3f}{row['p99']:>9.3f}{row['mean']:>9.3f}")
    ok = ours["p50"] <= TARGET_P50_MS and ours["p99"] <= TARGET_P99_MS
    print(
        f"ours vs stock arq p50: {result['speedup_p50']:.0f}x faster; target p50 <= "
        f"{TARGET_P50_MS} ms, p99 <= {TARGET_P99_MS} ms: {'PASS' if ok else 'MISS'}"
    )
    return 0
