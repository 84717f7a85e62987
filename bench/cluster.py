"""Events on a Redis Cluster: events/s and delivery lag with the events on 1 and on 3 shards.

The queue lives on one standalone server (`$REDIS_URL` when set, else an embedded Valkey);
the events (every per-job key) on an embedded Valkey Cluster of `1` master (the 1-shard
baseline, same cluster code path) or `3` masters, no replicas. Each layout has its own
`os.cpu_count()` worker processes (`bench._worker fast`, `events_url` = the cluster), all
started once; the idle layout's workers wait on the queue.

One run of a layout: `--jobs` jobs of `bench.apps:clock_app` are submitted, one subscriber
per job follows it from this process (one async `StreamingRAGClient`, fan-out on: one reader
per bucket on a cluster); every job waits on a gate file until all subscribers have their
job's first event, then yields `--tokens` tokens at each of `--rates` tokens/s (0: no
pacing, as fast as the workers publish, `--max-tokens` tokens per job for a longer window),
each token being the `time.time()` it was produced. With no pacing the lag is mostly the
backlog (everything is produced at once), not a latency.
Measured from the gate opening: events/s delivered to the subscribers (every event after
the gate, summed over jobs, divided by gate -> last receipt), delivery lag per CHUNK
(receipt `time.time()` minus the token's stamp: produce -> publish -> fan-out -> subscriber),
worker CPU per token (all the layout's workers, /proc schedstat) and events-server CPU per
event (INFO cpu summed over the masters). Key spread: the masters owning each job's events
key (`key_slot` -> slot ranges), checked against where the keys really are (EXISTS on the
owning node, not via a cluster client).

Runs alternate the layouts (order flipped every run); medians [min-max] over `--runs` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from streaming_rag import EventType
from streaming_rag.wire import JobKeys
from streaming_rag.wire.keys import BUCKETS, bucket_tag
from streaming_rag_cli.embedded_cluster import EmbeddedCluster
from streaming_rag_client import StreamingRAGClient

from ._common import cpu_seconds, new_prefix, percentiles, server, server_cpu_seconds
from ._common import worker_process as worker
from ._tools import drop_prefix, emit_json

APP = "bench.apps:clock_app"
SHARDS = (1, 3)
ATTACH_TIMEOUT_S = 60.0


def _master_ranges(cluster: EmbeddedCluster) -> list[tuple[int, tuple[tuple[int, int], ...]]]:
    return [(m.port, m.slots) for m in cluster.masters()]


def _owner(ranges: list[tuple[int, tuple[tuple[int, int], ...]]], slot: int) -> int:
    for port, spans in ranges:
        if any(a <= slot <= b for a, b in spans):
            return port
    raise LookupError(f"no master owns slot {slot}")


def key_spread(cluster: EmbeddedCluster, prefix: str, job_ids: list[str]) -> dict[str, Any]:
    """Jobs per master (by each job's events key slot), buckets per master, and how many
    events keys are not on the master their slot says (EXISTS on that node directly)."""
    ranges = _master_ranges(cluster)
    by_port: dict[int, list[str]] = {port: [] for port, _ in ranges}
    buckets: dict[int, set[int]] = {port: set() for port, _ in ranges}
    for job_id in job_ids:
        keys = JobKeys(prefix, job_id)
        port = _owner(ranges, cluster.key_slot(keys.events))
        by_port[port].append(keys.events)
        buckets[port].add(keys.bucket)
    misplaced = 0
    for port, names in by_port.items():
        node = redis.Redis(host="127.0.0.1", port=port)
        try:
            pipe = node.pipeline(transaction=False)
            for name in names:
                pipe.exists(name)
            misplaced += sum(1 for found in pipe.execute() if not found)
        finally:
            node.close()
    tags = Counter(_owner(ranges, cluster.key_slot(bucket_tag(b))) for b in range(BUCKETS))
    return {
        "bucket_tags_per_shard": [tags[port] for port, _ in ranges],
        "jobs_per_shard": [len(by_port[port]) for port, _ in ranges],
        "buckets_per_shard": [len(buckets[port]) for port, _ in ranges],
        "misplaced": misplaced,
    }


def _drop(url: str, prefix: str) -> None:
    """`drop_prefix`, quietly: after Ctrl-C an embedded server may already be gone."""
    with contextlib.suppress(redis.RedisError):
        drop_prefix(url, prefix)


def _nodes_cpu(ports: list[int]) -> float:
    return sum(server_cpu_seconds(f"redis://127.0.0.1:{port}") for port in ports)


async def one_run(
    queue_url: str,
    cluster: EmbeddedCluster,
    prefix: str,
    pids: list[int],
    jobs: int,
    tokens: int,
    rate: float,
) -> dict[str, Any]:
    interval = 1.0 / rate if rate else 0.0
    ports = [m.port for m in cluster.masters()]
    lags: list[float] = []
    received: list[float] = []  # receipt times of every event after the gate
    chunks = Counter[str]()
    attached = asyncio.Event()
    waiting = [jobs]
    gate_open = [float("inf")]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        gate = Path(tmp) / "gate"
        query = f"cluster gate={gate} tokens={tokens} interval={interval:.6f}"
        rag = StreamingRAGClient(
            queue_url, events_url=cluster.url, prefix=prefix, start_timeout=120, reconnect_s=5
        )
        try:

            async def follow(job_id: str) -> None:
                first = True
                async for event in rag.aevents(job_id):
                    now = time.time()
                    if first:
                        first = False
                        waiting[0] -= 1
                        if not waiting[0]:
                            attached.set()
                    if now >= gate_open[0]:
                        received.append(now)
                    if event.type is EventType.CHUNK:
                        lags.append((now - float(event.data)) * 1000)
                        chunks[job_id] += 1

            job_ids = list(await asyncio.gather(*(rag.asubmit(query) for _ in range(jobs))))
            tasks = [asyncio.create_task(follow(j)) for j in job_ids]
            try:
                await asyncio.wait_for(attached.wait(), ATTACH_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError(
                    f"{waiting[0]} of {jobs} subscribers got no event in {ATTACH_TIMEOUT_S} s"
                ) from None
            worker_cpu, server_cpu = sum(map(cpu_seconds, pids)), _nodes_cpu(ports)
            client_cpu = time.process_time()
            gate_open[0] = time.time()
            await asyncio.to_thread(gate.touch)
            await asyncio.gather(*tasks)
            client_cpu = time.process_time() - client_cpu
            worker_cpu = sum(map(cpu_seconds, pids)) - worker_cpu
            server_cpu = _nodes_cpu(ports) - server_cpu
            statuses = await asyncio.gather(*(rag.astatus(j) for j in job_ids))
        finally:
            await rag.aclose()
    short = sum(1 for j in job_ids if chunks[j] != tokens)
    not_done = [str(s) for s in statuses if s != "done"]
    seconds = max(received) - gate_open[0]
    tokens_total = sum(chunks.values())
    return {
        "shards": len(ports),
        "rate": rate,
        "events": len(received),
        "seconds": seconds,
        "events_per_s": len(received) / seconds,
        "lag_ms": percentiles(lags),
        "worker_cpu_us_per_token": worker_cpu / tokens_total * 1e6 if tokens_total else 0.0,
        "server_cpu_us_per_event": server_cpu / len(received) * 1e6,
        "client_cpu_us_per_event": client_cpu / len(received) * 1e6,
        "jobs_short": short,
        "jobs_not_done": len(not_done),
        "not_done_sample": not_done[:3],
        "spread": key_spread(cluster, prefix, job_ids),
    }


def _med(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    spread = [Counter(r["spread"]["jobs_per_shard"]) for r in rows]
    return {
        "runs": len(rows),
        "events_per_s": _med([r["events_per_s"] for r in rows]),
        "lag_p50_ms": _med([r["lag_ms"]["p50"] for r in rows]),
        "lag_p99_ms": _med([r["lag_ms"]["p99"] for r in rows]),
        "worker_cpu_us_per_token": _med([r["worker_cpu_us_per_token"] for r in rows]),
        "server_cpu_us_per_event": _med([r["server_cpu_us_per_event"] for r in rows]),
        "client_cpu_us_per_event": _med([r["client_cpu_us_per_event"] for r in rows]),
        "jobs_per_shard_last": rows[-1]["spread"]["jobs_per_shard"],
        "buckets_per_shard_last": rows[-1]["spread"]["buckets_per_shard"],
        "bucket_tags_per_shard": rows[-1]["spread"]["bucket_tags_per_shard"],
        "max_jobs_on_one_shard": _med([float(max(c.keys())) for c in spread]),
        "misplaced": sum(r["spread"]["misplaced"] for r in rows),
        "jobs_short": sum(r["jobs_short"] for r in rows),
        "jobs_not_done": sum(r["jobs_not_done"] for r in rows),
    }


def measure(
    jobs: int,
    tokens: int,
    max_tokens: int,
    rates: list[float],
    runs: int,
    log: Path | None = None,
) -> dict[str, Any]:
    workers = os.cpu_count() or 1
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        queue_url, where = stack.enter_context(server())
        layouts: dict[int, tuple[EmbeddedCluster, str, list[int]]] = {}
        for shards in SHARDS:
            cluster = stack.enter_context(EmbeddedCluster(masters=shards, replicas=0))
            prefix = new_prefix(f"cluster{shards}")
            stack.callback(_drop, queue_url, prefix)
            pids = []
            ready = redis.Redis.from_url(queue_url)
            for _ in range(workers):
                ready.delete(f"{prefix}:bench-ready")  # wait for this worker, not the last one
                proc = stack.enter_context(
                    worker(
                        queue_url,
                        prefix,
                        APP,
                        log=log,
                        events_url=cluster.url,
                        concurrency=jobs + 8,
                    )
                )
                pids.append(proc.pid)
            ready.close()
            layouts[shards] = (cluster, prefix, pids)
        for cluster, prefix, pids in layouts.values():  # warm-up: not reported
            asyncio.run(one_run(queue_url, cluster, prefix, pids, min(jobs, 20), 5, 0.0))
        for i in range(runs):
            for rate in rates:
                order = SHARDS if i % 2 == 0 else tuple(reversed(SHARDS))
                for shards in order:
                    cluster, prefix, pids = layouts[shards]
                    n = tokens if rate else max_tokens
                    rows.append(
                        asyncio.run(one_run(queue_url, cluster, prefix, pids, jobs, n, rate))
                    )
    summary = {
        f"{rate:g}/{shards}": summarize(
            [r for r in rows if r["rate"] == rate and r["shards"] == shards]
        )
        for rate in rates
        for shards in SHARDS
    }
    return {
        "server": where,
        "cpus": os.cpu_count(),
        "workers_per_layout": workers,
        "jobs": jobs,
        "tokens": tokens,
        "max_tokens": max_tokens,
        "rates": rates,
        "summary": summary,
        "rows": rows,
    }


def _fmt(m: dict[str, float], spec: str) -> str:
    return f"{m['median']:{spec}} [{m['min']:{spec}}-{m['max']:{spec}}]"


def _failures(r: dict[str, Any]) -> dict[str, int]:
    """Counts of misplaced keys, short and unfinished jobs, over every run (none: PASS)."""
    return {
        k: v
        for k in ("misplaced", "jobs_short", "jobs_not_done")
        if (v := sum(s[k] for s in r["summary"].values()))
    }


def _ok(r: dict[str, Any]) -> bool:
    return not _failures(r)


def _print(r: dict[str, Any]) -> None:
    print(
        f"cluster: {r['jobs']} jobs x {r['tokens']} tokens paced ({r['max_tokens']} unpaced), "
        "events on 1 vs 3 shards, "
        f"{r['workers_per_layout']} worker processes per layout, {r['cpus']} CPUs "
        f"(queue: {r['server']})"
    )
    print(
        f"{'tok/s':>6}{'shards':>7}{'events/s':>26}{'lag p50 ms':>22}{'lag p99 ms':>24}"
        f"{'wrk µs/tok':>11}{'srv µs/ev':>10}{'sub µs/ev':>10}  jobs per shard"
    )
    for rate in r["rates"]:
        for shards in SHARDS:
            s = r["summary"][f"{rate:g}/{shards}"]
            pace = f"{rate:g}" if rate else "max"
            per_shard = "/".join(map(str, s["jobs_per_shard_last"]))
            print(
                f"{pace:>6}{shards:>7}{_fmt(s['events_per_s'], ',.0f'):>26}"
                f"{_fmt(s['lag_p50_ms'], '.1f'):>22}{_fmt(s['lag_p99_ms'], '.1f'):>24}"
                f"{s['worker_cpu_us_per_token']['median']:>11.1f}"
                f"{s['server_cpu_us_per_event']['median']:>10.1f}"
                f"{s['client_cpu_us_per_event']['median']:>10.1f}  {per_shard}"
            )
        one, three = r["summary"][f"{rate:g}/1"], r["summary"][f"{rate:g}/3"]
        ratio = three["events_per_s"]["median"] / one["events_per_s"]["median"]
        pace = f"{rate:g} tok/s" if rate else "no pacing"
        print(f"  {pace}: 3 shards / 1 shard events/s = {ratio:.2f}x")
    bad = _failures(r)
    runs = next(iter(r["summary"].values()))["runs"]
    tags = "/".join(map(str, r["summary"][f"{r['rates'][0]:g}/3"]["bucket_tags_per_shard"]))
    print(f"the {BUCKETS} bucket hash tags over 3 evenly sliced shards: {tags}")
    print(
        f"medians [min-max] over {runs} runs per row, layouts alternating; lag = token "
        f"produced -> received; 'jobs per shard' of the last run (events key slot -> master; "
        f"64 buckets); CPU: the layout's workers per token, its masters and this "
        f"subscriber process per delivered event; every job complete and every key on its master"
        f"{' (' + str(bad) + ')' if bad else ''}: {'MISS' if bad else 'PASS'}"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="concurrent jobs per run (200)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per job (200)")
    parser.add_argument(
        "--max-tokens", type=int, default=1000, help="tokens per job with no pacing (1000)"
    )
    parser.add_argument(
        "--rates", default="50,0", help="tokens/s per job, comma-separated; 0: no pacing (50,0)"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per layout and rate (3)")
    parser.add_argument("--worker-log", type=Path, help="append the workers' output to this file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rates = [float(x) for x in args.rates.split(",") if x]
    if min(args.jobs, args.tokens, args.max_tokens, args.runs) < 1 or not rates or min(rates) < 0:
        parser.error("--jobs, --tokens, --runs and --max-tokens must be >= 1, --rates >= 0")
    # Ctrl-C raises KeyboardInterrupt where it lands, also inside asyncio.run: left to
    # asyncio, it becomes a cancellation of the run, which the client's fan-out `aclose`
    # can swallow (`suppress(BaseException)` around `await reader`), and the bench would go on
    signal.signal(signal.SIGINT, _interrupt)
    result = measure(args.jobs, args.tokens, args.max_tokens, rates, args.runs, args.worker_log)
    result["failures"] = _failures(result)
    result["verdict"] = "MISS" if result["failures"] else "PASS"
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0 if _ok(result) else 1
