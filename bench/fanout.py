"""Fan-out: produce → receive lag with 1, 10, 100, 1,000 subscribers of one job in one client
process, the client's CPU per subscriber-event, worker and server CPU per event, the
collector's longest pause, and a subscriber joining 50 ms late.

The worker (its own process) waits 1 s (while the subscribers attach), then streams 100 tokens
20 ms apart, each token being the time it was produced; every subscriber records
`time.time() - token` on receipt. All subscribers share the async client's one fan-out reader.

- client µs/sub-ev: this process's CPU seconds from the moment every subscriber has attached
  (each got its first event) to the end of the job, divided by events x subscribers (the
  reader's own decode is shared, so it shrinks per subscriber as they grow; target at 1,000).
- gen0/sub-ev: young-generation collections during the run x the gen-0 threshold, per
  subscriber-event: the GC-tracked objects (allocations net of deallocations) that drive
  collections, e.g. the wake-up handles of 1,000 subscribers queued at once.
- max GC ms: the longest collector pause during the run (`gc.callbacks`).
- worker / server µs/ev: their CPU over the job per event written (the worker's must not
  depend on the number of subscribers: watchers cost it nothing).

Levels alternate over `--runs` rounds (default 3); the table shows medians and, in brackets,
the spread (min-max). The `frozen` row calls `gc.freeze()` once every subscriber has attached
(as a long-running server does after start-up: what is alive then leaves the collector's scans).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import time
from typing import Any

from streaming_rag_client import StreamingRAGClient

from ._common import cpu_seconds, new_prefix, percentiles, server, server_cpu_seconds
from ._common import worker_process as worker
from ._tools import scorecard, verdict

LEVELS = (1, 10, 100, 1000)
TARGETS_P99_MS = {100: 5.0, 1000: 25.0}
TARGET_US_PER_SUB_EVENT = 2.0  # at 1,000 subscribers


class GCPauses:
    """The longest garbage-collector pause (ms) while in use, and collections per generation,
    from `gc.callbacks`."""

    def __init__(self) -> None:
        self.longest_ms = 0.0
        self.collections = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.collections[info["generation"]] += 1
            self.longest_ms = max(self.longest_ms, (time.perf_counter() - self._start) * 1000)

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def one_level(
    url: str, prefix: str, pid: int, subscribers: int, *, freeze: bool = False
) -> dict[str, Any]:
    rag = StreamingRAGClient(url, prefix=prefix)
    pauses = GCPauses()
    attached = asyncio.Event()
    waiting = [subscribers]
    try:
        lags: list[float] = []

        async def follow(job_id: str, counted: bool = True) -> int:
            received = 0
            first = counted
            async for event in rag.aevents(job_id):
                if first:
                    first = False
                    waiting[0] -= 1
                    if waiting[0] == 0:
                        attached.set()
                if event.is_chunk:
                    lags.append((time.time() - float(event.data)) * 1000)
                    received += 1
            return received

        worker_cpu, server_cpu = cpu_seconds(pid), server_cpu_seconds(url)
        job_id = await rag.asubmit("fan out")
        submitted = time.monotonic()
        tasks = [asyncio.create_task(follow(job_id)) for _ in range(subscribers)]
        await asyncio.wait_for(attached.wait(), 30)  # every subscriber has its first event
        if freeze:  # what a server does after start-up: long-lived objects leave the GC's scans
            gc.freeze()
        client_cpu = cpu_seconds(os.getpid())
        with pauses:
            await asyncio.sleep(max(0.0, submitted + 1.05 - time.monotonic()))
            late = asyncio.create_task(follow(job_id, counted=False))  # ~50 ms after token 1
            counts = await asyncio.gather(*tasks)
            late_count = await late
            client_cpu = cpu_seconds(os.getpid()) - client_cpu
        worker_cpu, server_cpu = cpu_seconds(pid) - worker_cpu, server_cpu_seconds(url) - server_cpu
        events = counts[0] + 4  # chunks + the lifecycle events
        sub_events = events * (subscribers + 1)  # + the late one
        return {
            "subscribers": subscribers,
            "gc_freeze": freeze,
            "longest_gc_pause_ms": pauses.longest_ms,
            "gc_collections": pauses.collections,
            "gen0_objects_per_sub_event": pauses.collections[0]
            * gc.get_threshold()[0]
            / sub_events,
            "lag_ms": percentiles(lags),
            "late_subscriber_missed": counts[0] - late_count,
            "client_us_per_sub_event": client_cpu / sub_events * 1e6,
            "worker_us_per_event": worker_cpu / events * 1e6,
            "server_us_per_event": server_cpu / events * 1e6,
        }
    finally:
        if freeze:
            gc.unfreeze()
        await rag.aclose()


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and (min, max) of each figure over the runs of one level."""
    figures = {
        "lag_p50_ms": [r["lag_ms"]["p50"] for r in runs],
        "lag_p99_ms": [r["lag_ms"]["p99"] for r in runs],
        "client_us_per_sub_event": [r["client_us_per_sub_event"] for r in runs],
        "gen0_objects_per_sub_event": [r["gen0_objects_per_sub_event"] for r in runs],
        "longest_gc_pause_ms": [r["longest_gc_pause_ms"] for r in runs],
        "worker_us_per_event": [r["worker_us_per_event"] for r in runs],
        "server_us_per_event": [r["server_us_per_event"] for r in runs],
    }
    out: dict[str, Any] = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v)}
        for name, v in figures.items()
    }
    out["late_subscriber_missed"] = max(r["late_subscriber_missed"] for r in runs)
    out["subscribers"] = runs[0]["subscribers"]
    out["gc_freeze"] = runs[0]["gc_freeze"]
    out["runs"] = runs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fanout", description=__doc__)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="1,10,100,1000")
    parser.add_argument("--runs", type=int, default=3, help="rounds over the levels (>= 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--no-freeze-row", action="store_true", help="skip the extra gc.freeze() run"
    )
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    plan = [(n, False) for n in levels]
    if not args.no_freeze_row and max(levels) >= 100:
        plan.append((max(levels), True))
    by_level: dict[tuple[int, bool], list[dict[str, Any]]] = {p: [] for p in plan}
    with server() as (url, where):
        prefix = new_prefix("fanout")
        with worker(url, prefix, "bench.apps:paced_app") as proc:
            asyncio.run(one_level(url, prefix, proc.pid, 1))  # warm-up: not reported
            for round_ in range(max(1, args.runs)):
                order = plan if round_ % 2 == 0 else plan[::-1]  # alternate the order
                for n, frozen in order:
                    row = asyncio.run(one_level(url, prefix, proc.pid, n, freeze=frozen))
                    by_level[(n, frozen)].append(row)
    rows = [_summary(by_level[p]) for p in plan]
    default = [r for r in rows if not r["gc_freeze"]]
    cpu = [r["worker_us_per_event"]["median"] for r in default]
    spread = (max(cpu) - min(cpu)) / min(cpu) if min(cpu) else 0.0
    checks: dict[str, bool] = {"worker CPU spread <= 10%": spread <= 0.10}
    for r in default:
        n = r["subscribers"]
        if n in TARGETS_P99_MS:
            checks[f"p99 <= {TARGETS_P99_MS[n]:g} ms at {n}"] = (
                r["lag_p99_ms"]["median"] <= TARGETS_P99_MS[n]
            )
        if n == 1000:
            checks[f"<= {TARGET_US_PER_SUB_EVENT:g} µs per sub-event at 1000"] = (
                r["client_us_per_sub_event"]["median"] <= TARGET_US_PER_SUB_EVENT
            )
    checks["late subscriber misses nothing"] = all(r["late_subscriber_missed"] == 0 for r in rows)
    result = {
        "server": where,
        "runs": args.runs,
        "levels": rows,
        "worker_cpu_spread": spread,
        "checks": checks,
        "pass": all(checks.values()),
    }
    _record(rows)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"fanout: 100 tokens 20 ms apart, one client process ({where}); "
        f"medians [min-max] over {args.runs} alternating runs"
    )
    print(
        f"{'subs':>11}{'lag p50 ms':>18}{'p99 ms':>20}{'client µs/sub-ev':>22}"
        f"{'gen0/sub-ev':>13}{'max GC ms':>19}{'worker µs/ev':>14}{'server µs/ev':>14}"
        f"{'late missed':>12}"
    )

    def cell(f: dict[str, float], width: int, digits: int = 1) -> str:
        text = f"{f['median']:.{digits}f} [{f['min']:.{digits}f}-{f['max']:.{digits}f}]"
        return f"{text:>{width}}"

    for r in rows:
        name = f"{r['subscribers']}{' frozen' if r['gc_freeze'] else ''}"
        print(
            f"{name:>11}{cell(r['lag_p50_ms'], 18)}{cell(r['lag_p99_ms'], 20)}"
            f"{cell(r['client_us_per_sub_event'], 22, 2)}"
            f"{r['gen0_objects_per_sub_event']['median']:>13.2f}"
            f"{cell(r['longest_gc_pause_ms'], 19)}"
            f"{r['worker_us_per_event']['median']:>14.0f}"
            f"{r['server_us_per_event']['median']:>14.0f}{r['late_subscriber_missed']:>12}"
        )
    for name, ok in checks.items():
        print(f"  {name}: {verdict(ok)}")
    print(
        "'frozen': gc.freeze() once every subscriber has attached, as a long-running server "
        "does after start-up; 'max GC ms': the longest collector pause during the run; "
        "'gen0/sub-ev': young collections x threshold per subscriber-event"
    )
    return 0


def _cell(f: dict[str, float], digits: int = 1) -> str:
    return f"{f['median']:.{digits}f} [{f['min']:.{digits}f}-{f['max']:.{digits}f}]"


def _record(rows: list[dict[str, Any]]) -> None:
    """The scorecard rows: p99 lag and µs per subscriber-event at 1,000, beside 1 subscriber
    and the gc.freeze() run."""
    by = {(r["subscribers"], r["gc_freeze"]): r for r in rows}
    top, one, frozen = by.get((1000, False)), by.get((1, False)), by.get((1000, True))
    if top is None:
        return
    against = f"1 subscriber {_cell(one['lag_p99_ms'])}" if one else "-"
    if frozen:
        against += f"; gc.freeze() {_cell(frozen['lag_p99_ms'])}"
    scorecard(
        "fan-out p99 lag, 1,000 subscribers, default GC (ms)",
        _cell(top["lag_p99_ms"]),
        against,
        f"<= {TARGETS_P99_MS[1000]:g}",
        top["lag_p99_ms"]["median"] <= TARGETS_P99_MS[1000],
    )
    scorecard(
        "fan-out client CPU per subscriber-event, 1,000 subscribers (µs)",
        _cell(top["client_us_per_sub_event"], 2),
        f"longest GC pause {_cell(top['longest_gc_pause_ms'])} ms",
        f"<= {TARGET_US_PER_SUB_EVENT:g}",
        top["client_us_per_sub_event"]["median"] <= TARGET_US_PER_SUB_EVENT,
    )
