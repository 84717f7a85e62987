"""Memory: Redis bytes per stored event and per finished job; worker RSS over many jobs.

Per event: two jobs of 40-byte CHUNKs (`bench.apps:chunk40_app`, `tokens=N` and `tokens=2N`)
run by a worker; `MEMORY USAGE <stream> SAMPLES 0` / XLEN gives the average per entry, and the
difference between the two streams / N the marginal bytes per 40-byte chunk event (the figure
held to the target: it leaves out the stream's fixed overhead).
Per finished job: the sum of `MEMORY USAGE` over every key naming one finished small job
(5 chunks) once it has ended, i.e. what each job costs during its retention window.
Worker RSS: `VmRSS` of the worker process (from /proc) after `--warmup` jobs and after
`--jobs` more, submitted with `--inflight` in flight; "flat" = grew by at most
max(2 MiB, 3%).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis

from streaming_rag import EventType
from streaming_rag.wire import JobKeys, encode_event
from streaming_rag_client import StreamingRAGClient

from ._common import new_prefix, server, worker_process
from ._tools import drop_prefix, emit_json, verdict
from .apps import CHUNK_40B

APP = "bench.apps:chunk40_app"
TARGET_BYTES_PER_EVENT = 100
FINAL = {b"done", b"failed", b"cancelled"}
FLAT_MIB, FLAT_SHARE = 2.0, 0.03


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _usage(r: redis.Redis, key: str | bytes) -> int:
    size: Any = r.memory_usage(key, samples=0)
    return int(size or 0)


def _run(rag: StreamingRAGClient, query: str) -> str:
    job_id = rag.submit(query)
    for _ in rag.events(job_id):
        pass
    return job_id


def per_event(r: redis.Redis, rag: StreamingRAGClient, prefix: str, n: int) -> dict[str, float]:
    sizes = {}
    for tokens in (n, 2 * n):
        key = JobKeys(prefix, _run(rag, f"memory tokens={tokens}")).events
        length: Any = r.xlen(key)
        sizes[tokens] = (_usage(r, key), int(length))
    (small, small_len), (big, big_len) = sizes[n], sizes[2 * n]
    return {
        "chunk_payload_bytes": float(len(encode_event(EventType.CHUNK, CHUNK_40B, 0.0123))),
        "stream_entries": float(big_len),
        "stream_bytes": float(big),
        "avg_bytes_per_entry": big / big_len,
        "marginal_bytes_per_chunk": (big - small) / (big_len - small_len),
    }


def per_job(r: redis.Redis, rag: StreamingRAGClient) -> dict[str, Any]:
    job_id = _run(rag, "memory tokens=5")
    time.sleep(0.3)  # let arq drop its in-progress marker
    keys = list(r.scan_iter(match=f"*{job_id}*", count=1000))
    usage = {k.decode(): _usage(r, k) for k in sorted(keys)}
    events: Any = r.xlen(JobKeys(rag.prefix, job_id).events)
    return {"keys": usage, "bytes": sum(usage.values()), "events": int(events)}


def _drive(r: redis.Redis, rag: StreamingRAGClient, total: int, inflight: int, pid: int) -> Any:
    """Run `total` small jobs, `inflight` at a time; RSS samples every ~10% of them."""
    pending: list[str] = []
    submitted = done = failed = 0
    samples: list[tuple[int, int]] = []
    step = max(1, total // 10)
    while submitted < total or pending:
        while submitted < total and len(pending) < inflight:
            pending.append(rag.submit("memory tokens=5"))
            submitted += 1
        pipe = r.pipeline(transaction=False)
        for job_id in pending:
            pipe.hget(JobKeys(rag.prefix, job_id).meta, "status")
        statuses = pipe.execute()
        still = [j for j, s in zip(pending, statuses, strict=True) if s not in FINAL]
        finished = [s for s in statuses if s in FINAL]
        failed += sum(1 for s in finished if s != b"done")
        before, done = done, done + len(finished)
        pending = still
        if done // step != before // step:
            samples.append((done, rss_kib(pid)))
        if len(pending) >= inflight or submitted >= total:
            time.sleep(0.002)
    return samples, failed


def measure(tokens: int, warmup: int, jobs: int, inflight: int) -> dict[str, Any]:
    with server() as (url, where):
        prefix = new_prefix("memory")
        r = redis.Redis.from_url(url)
        try:
            with (
                worker_process(
                    url, prefix, APP, kind="fast", concurrency=inflight + 20, retention_s=600
                ) as proc,
                StreamingRAGClient(url, prefix=prefix) as rag,
            ):
                event = per_event(r, rag, prefix, tokens)
                job = per_job(r, rag)
                t0 = time.perf_counter()
                _drive(r, rag, warmup, inflight, proc.pid)
                time.sleep(0.5)
                warm = rss_kib(proc.pid)
                samples, failed = _drive(r, rag, jobs, inflight, proc.pid)
                time.sleep(0.5)
                final = rss_kib(proc.pid)
                seconds = time.perf_counter() - t0
        finally:
            r.close()
            drop_prefix(url, prefix)
    growth = final - warm
    flat = growth <= max(FLAT_MIB * 1024, FLAT_SHARE * warm)
    ok = event["marginal_bytes_per_chunk"] <= TARGET_BYTES_PER_EVENT and flat and not failed
    return {
        "server": where,
        "per_event": event,
        "per_finished_job": job,
        "rss": {
            "warmup_jobs": warmup,
            "jobs": jobs,
            "inflight": inflight,
            "failed_jobs": failed,
            "jobs_per_s": (warmup + jobs) / seconds,
            "warm_kib": warm,
            "final_kib": final,
            "growth_kib": growth,
            "samples_done_kib": samples,
            "flat": flat,
        },
        "target_bytes_per_chunk_event": TARGET_BYTES_PER_EVENT,
        "verdict": verdict(ok),
    }


def _print(r: dict[str, Any]) -> None:
    e, j, m = r["per_event"], r["per_finished_job"], r["rss"]
    print(f"memory ({r['server']})")
    print(
        f"stream of {e['stream_entries']:.0f} events ({e['chunk_payload_bytes']:.0f}-byte msgpack "
        f"per 40-byte chunk): {e['stream_bytes']:,.0f} B, {e['avg_bytes_per_entry']:.1f} B/entry"
    )
    ok = e["marginal_bytes_per_chunk"] <= TARGET_BYTES_PER_EVENT
    print(
        f"marginal bytes per 40-byte chunk event: {e['marginal_bytes_per_chunk']:.1f} B "
        f"(target <= {TARGET_BYTES_PER_EVENT} B: {verdict(ok)})"
    )
    print(
        f"finished job ({j['events']} events, 5 chunks): {j['bytes']:,} B in {len(j['keys'])} keys"
    )
    for key, size in j["keys"].items():
        print(f"  {size:>7,} B  {key}")
    print(
        f"worker RSS: {m['warm_kib'] / 1024:.1f} MiB after {m['warmup_jobs']:,} warm-up jobs, "
        f"{m['final_kib'] / 1024:.1f} MiB after {m['jobs']:,} more ({m['inflight']} in flight, "
        f"{m['jobs_per_s']:,.0f} jobs/s, {m['failed_jobs']} failed)"
    )
    trail = ", ".join(f"{d:,}: {kib / 1024:.1f}" for d, kib in m["samples_done_kib"])
    print(f"  RSS MiB by jobs done: {trail}")
    print(
        f"  growth {m['growth_kib'] / 1024:+.2f} MiB: {'flat' if m['flat'] else 'GROWING'} "
        f"(flat = at most max({FLAT_MIB:g} MiB, {FLAT_SHARE:.0%}))"
    )
    print(f"targets (<= {TARGET_BYTES_PER_EVENT} B per chunk event, RSS flat): {r['verdict']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__)
    parser.add_argument("--tokens", type=int, default=1000, help="N for the per-event jobs")
    parser.add_argument("--warmup", type=int, default=1000, help="warm-up jobs (1000)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs after warm-up (10000)")
    parser.add_argument("--inflight", type=int, default=300, help="jobs in flight (300)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.tokens, args.warmup, args.jobs, args.inflight) < 1:
        parser.error("counts must be >= 1")
    result = measure(args.tokens, args.warmup, args.jobs, args.inflight)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0
