"""Publish throughput: events/s one worker process writes, vs raw redis-py XADD, in one run.

Jobs: `bench.apps:instant_app` answering `tokens=2000` (2,004 events per job: three
lifecycle events, 2,000 CHUNKs, GENERATION_DONE), produced as fast as the worker can publish.

Timed region (server clock, so submitting is not part of it): from the earliest `started_ms`
of the jobs (set by the worker's CLAIM script as it takes a job) to the first poll that finds
every job's final status set, i.e. its terminal event in Redis (one `TIME` + `HGET status`
pipeline per ms on the job expected to finish last). The 200 jobs are all queued *before* the
worker process starts, so it takes them at once; the single job runs afterwards on the warm,
idle worker (median of `--single-runs`; CPU figures over all of them). Resolution: ~1 ms
at each end.

Baselines against the same server in the same run, events of the same encoded size to one
stream: redis-py asyncio pipelines of N=64 XADDs, and one awaited XADD per event.
Worker and server CPU per event come from /proc/<pid>/stat and INFO cpu.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import redis
import redis.asyncio

from streaming_rag import EventType
from streaming_rag.wire import JobKeys, encode_event
from streaming_rag_client import StreamingRAGClient

from ._common import new_prefix, server, worker_process
from ._tools import drop_prefix, emit_json, verdict

APP = "bench.apps:instant_app"
PAYLOAD = encode_event(EventType.CHUNK, "token ", 0.0123)
TARGET_RAW_SHARE, TARGET_VS_AWAIT = 0.5, 5.0
FINAL = {b"done", b"failed", b"cancelled"}
_TICK = os.sysconf("SC_CLK_TCK")


async def _raw(url: str, key: str, events: int, per_pipe: int) -> float:
    """events/s for `events` XADDs, `per_pipe` per pipeline (1: one await per XADD)."""
    r = redis.asyncio.Redis.from_url(url)
    try:
        await r.ping()
        t0 = time.perf_counter()
        if per_pipe == 1:
            for _ in range(events):
                await r.xadd(key, {"e": PAYLOAD})
        else:
            for start in range(0, events, per_pipe):
                async with r.pipeline(transaction=False) as pipe:
                    for _ in range(min(per_pipe, events - start)):
                        pipe.xadd(key, {"e": PAYLOAD})
                    await pipe.execute()
        rate = events / (time.perf_counter() - t0)
        await r.delete(key)
        return rate
    finally:
        await r.aclose()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _server_cpu_s(r: redis.Redis) -> float:
    info: dict[str, Any] = r.info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _wait_done(r: redis.Redis, metas: list[str]) -> float:
    """Server time (s) of the first poll that finds every job final; polls every ~1 ms."""
    i = len(metas) - 1  # the last submitted usually ends last; then sweep the others
    pending = list(metas)
    while True:
        pipe = r.pipeline(transaction=False)
        pipe.time()
        pipe.hget(pending[i], "status")
        (sec, usec), status = pipe.execute()
        if status in FINAL:
            pending.pop(i)
            if not pending:
                return float(sec) + float(usec) / 1e6
            i = len(pending) - 1
            continue
        time.sleep(0.001)


def _run_jobs(r: redis.Redis, keys: list[JobKeys], pid: int) -> dict[str, float]:
    cpu0, srv0 = _cpu_s(pid), _server_cpu_s(r)
    end = _wait_done(r, [k.meta for k in keys])
    cpu1, srv1 = _cpu_s(pid), _server_cpu_s(r)
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.hmget(k.meta, ["started_ms", "status"])
        pipe.xlen(k.events)
    out = pipe.execute()
    starts = [int(s) for s, _ in out[::2]]
    bad = [st for _, st in out[::2] if st != b"done"]
    if bad:
        raise RuntimeError(f"{len(bad)} job(s) did not end done: {bad[:3]}")
    events = sum(out[1::2])
    seconds = end - min(starts) / 1000
    return {
        "jobs": len(keys),
        "events": events,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "worker_cpu_us_per_event": (cpu1 - cpu0) * 1e6 / events,
        "server_cpu_us_per_event": (srv1 - srv0) * 1e6 / events,
    }


def measure(jobs: int, tokens: int, single_runs: int, raw_events: int, await_events: int) -> Any:
    query = f"publish tokens={tokens}"
    with server() as (url, where):
        prefix = new_prefix("publish")
        r = redis.Redis.from_url(url)
        try:
            raw64 = asyncio.run(_raw(url, f"{prefix}:raw", raw_events, 64))
            await1 = asyncio.run(_raw(url, f"{prefix}:raw1", await_events, 1))
            with StreamingRAGClient(url, prefix=prefix, start_timeout=120) as rag:
                ids = [rag.submit(query) for _ in range(jobs)]  # queued before the worker runs
                conc = max(100, jobs + 8)
                with worker_process(url, prefix, APP, kind="fast", concurrency=conc) as proc:
                    many = _run_jobs(r, [JobKeys(prefix, j) for j in ids], proc.pid)
                    singles = []
                    for _ in range(single_runs):
                        keys = JobKeys(prefix, rag.submit(query))
                        singles.append(_run_jobs(r, [keys], proc.pid))
        finally:
            r.close()
            drop_prefix(url, prefix)
    single = dict(min(singles, key=lambda s: abs(s["events_per_s"] - _median_rate(singles))))
    total = sum(s["events"] for s in singles)  # CPU ticks are 10 ms: aggregate the runs
    for cpu in ("worker_cpu_us_per_event", "server_cpu_us_per_event"):
        single[cpu] = sum(s[cpu] * s["events"] for s in singles) / total
    rows = {"1 job": single, f"{jobs} jobs": many}
    for row in rows.values():
        row["share_of_raw_pipelined"] = row["events_per_s"] / raw64
        row["x_one_await"] = row["events_per_s"] / await1
    ok = many["share_of_raw_pipelined"] >= TARGET_RAW_SHARE and all(
        row["x_one_await"] >= TARGET_VS_AWAIT for row in rows.values()
    )
    return {
        "server": where,
        "tokens_per_job": tokens,
        "baselines_events_per_s": {"raw_pipelined_n64": raw64, "one_await_per_event": await1},
        "results": rows,
        "single_runs_events_per_s": [s["events_per_s"] for s in singles],
        "targets": {"share_of_raw_pipelined": TARGET_RAW_SHARE, "x_one_await": TARGET_VS_AWAIT},
        "verdict": verdict(ok),
    }


def _median_rate(rows: list[dict[str, float]]) -> float:
    return statistics.median(row["events_per_s"] for row in rows)


def _print(r: dict[str, Any]) -> None:
    base = r["baselines_events_per_s"]
    print(f"publish: events/s one worker process writes ({r['server']})")
    print(f"baseline raw redis-py pipelined XADD, N=64: {base['raw_pipelined_n64']:>10,.0f} ev/s")
    print(f"baseline one awaited XADD per event:       {base['one_await_per_event']:>10,.0f} ev/s")
    head = f"{'worker':<10}{'events':>9}{'s':>8}{'ev/s':>10}{'of raw':>8}{'x await':>9}"
    print(head + f"{'worker us/ev':>14}{'server us/ev':>14}")
    for name, row in r["results"].items():
        print(
            f"{name:<10}{row['events']:>9,}{row['seconds']:>8.3f}{row['events_per_s']:>10,.0f}"
            f"{row['share_of_raw_pipelined']:>7.0%} {row['x_one_await']:>8.1f}x"
            f"{row['worker_cpu_us_per_event']:>14.2f}{row['server_cpu_us_per_event']:>14.2f}"
        )
    t = r["targets"]
    print(
        f"targets: >= {t['share_of_raw_pipelined']:.0%} of raw pipelined with "
        f"{list(r['results'])[1]}, >= {t['x_one_await']:g}x one-await: {r['verdict']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench publish", description=__doc__)
    parser.add_argument("--jobs", type=int, default=200, help="concurrent jobs (200)")
    parser.add_argument("--tokens", type=int, default=2000, help="tokens per job (2000)")
    parser.add_argument("--single-runs", type=int, default=9, help="1-job runs, median (9)")
    parser.add_argument("--raw-events", type=int, default=100_000, help="pipelined baseline")
    parser.add_argument("--await-events", type=int, default=20_000, help="one-await baseline")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if min(args.jobs, args.tokens, args.single_runs, args.raw_events, args.await_events) < 1:
        parser.error("counts must be >= 1")
    result = measure(args.jobs, args.tokens, args.single_runs, args.raw_events, args.await_events)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0
