"""Replay throughput: events/s reading and decoding a finished trace, sync and async clients.

The trace is written directly in the wire format (`wire.encode_event` entries, pipelined
XADDs, plus a job hash with status `done`, as the worker's scripts leave them): RETRIEVAL_START,
RETRIEVAL_DONE, GENERATION_START, CHUNKs of "token ", GENERATION_DONE; 10,000 events in all.
Each figure is the median of `--runs` full reads of the trace (`events(job_id)` /
`aevents(job_id)` to the end); for context, the same reads with bare redis-py XRANGE (COUNT
1000, no decoding) and XRANGE + `wire.decode_entry`. `--profile` prints the top of a cProfile
of one sync and one async read.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis

from streaming_rag import EventType
from streaming_rag.wire import JobKeys, decode_entry, encode_event, new_job_id
from streaming_rag_client import StreamingRAGClient

from ._common import new_prefix, server
from ._tools import drop_prefix, emit_json, verdict

TARGET_EVENTS_PER_S = 300_000
PAGE = 1000


def write_trace(r: redis.Redis, keys: JobKeys, events: int) -> None:
    """A finished job's stream and hash, as a worker would have left them."""
    docs = [{"content": "replayed document", "score": 0.9}]
    head = [
        encode_event(EventType.RETRIEVAL_START, {"query": "replay"}, 0.0),
        encode_event(EventType.RETRIEVAL_DONE, {"num_docs": 1, "docs": docs}, 0.0001),
        encode_event(EventType.GENERATION_START, {"prompt_chars": 120}, 0.0002),
    ]
    chunks = events - len(head) - 1
    done = encode_event(EventType.GENERATION_DONE, {"total_latency": 0.5}, 0.5)
    payloads = [*head, *(encode_event(EventType.CHUNK, "token ", 0.0003) for _ in range(chunks))]
    payloads.append(done)
    now = int(time.time() * 1000)
    for start in range(0, len(payloads), PAGE):
        pipe = r.pipeline(transaction=False)
        for payload in payloads[start : start + PAGE]:
            pipe.xadd(keys.events, {"e": payload})
        pipe.execute()
    r.hset(
        keys.meta,
        mapping={
            "status": "done",
            "created_ms": now - 600,
            "start_timeout_ms": 30_000,
            "start_deadline_ms": now + 29_400,
            "started_ms": now - 550,
            "worker": "bench-replay",
            "finished_ms": now,
        },
    )
    for key in (keys.events, keys.meta):
        r.pexpire(key, 600_000)


def _raw_read(r: redis.Redis, keys: JobKeys, decode: bool) -> int:
    n, cursor = 0, "-"
    while True:
        entries: Any = r.xrange(keys.events, cursor, "+", count=PAGE)
        if not entries:
            return n
        if decode:
            for entry_id, fields in entries:
                decode_entry(keys.job_id, entry_id, fields)
        n += len(entries)
        last = entries[-1][0].decode()
        ms, seq = last.split("-")
        cursor = f"{ms}-{int(seq) + 1}"


def _median_rate(read: Callable[[], int], runs: int) -> dict[str, float]:
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        n = read()
        rates.append(n / (time.perf_counter() - t0))
    return {"events_per_s": statistics.median(rates), "best": max(rates), "events": float(n)}


async def _aread(rag: StreamingRAGClient, job_id: str) -> int:
    n = 0
    async for _ in rag.aevents(job_id):
        n += 1
    return n


def _profile(label: str, read: Callable[[], Any], top: int) -> None:
    prof = cProfile.Profile()
    prof.runcall(read)
    print(f"\n--- cProfile: {label} (top {top} by own time) ---")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def measure(events: int, runs: int, profile: int) -> dict[str, Any]:
    with server() as (url, where):
        prefix = new_prefix("replay")
        keys = JobKeys(prefix, new_job_id())
        r = redis.Redis.from_url(url)
        try:
            write_trace(r, keys, events)
            rows: dict[str, dict[str, float]] = {}
            rows["redis-py XRANGE (no decode)"] = _median_rate(
                lambda: _raw_read(r, keys, False), runs
            )
            rows["XRANGE + wire.decode_entry"] = _median_rate(
                lambda: _raw_read(r, keys, True), runs
            )
            with StreamingRAGClient(url, prefix=prefix) as rag:
                job = keys.job_id
                rows["client events() (sync)"] = _median_rate(
                    lambda: sum(1 for _ in rag.events(job)), runs
                )
                loop = asyncio.new_event_loop()
                try:
                    rows["client aevents() (async)"] = _median_rate(
                        lambda: loop.run_until_complete(_aread(rag, job)), runs
                    )
                    if profile:
                        _profile("sync events()", lambda: sum(1 for _ in rag.events(job)), profile)
                        aread = lambda: loop.run_until_complete(_aread(rag, job))  # noqa: E731
                        _profile("async aevents()", aread, profile)
                    loop.run_until_complete(rag.aclose())
                finally:
                    loop.close()
        finally:
            r.close()
            drop_prefix(url, prefix)
    clients = [v for k, v in rows.items() if k.startswith("client")]
    ok = all(v["events_per_s"] >= TARGET_EVENTS_PER_S for v in clients)
    return {
        "server": where,
        "trace_events": events,
        "runs": runs,
        "results": rows,
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "verdict": verdict(ok),
    }


def _print(r: dict[str, Any]) -> None:
    print(
        f"replay: events/s reading a finished {r['trace_events']:,}-event trace, median of "
        f"{r['runs']} ({r['server']})"
    )
    print(f"{'reader':<30}{'ev/s':>12}{'best':>12}{'us/ev':>8}  target")
    for name, row in r["results"].items():
        client = name.startswith("client")
        mark = (
            f">= {TARGET_EVENTS_PER_S:,} {verdict(row['events_per_s'] >= TARGET_EVENTS_PER_S)}"
            if client
            else "(context)"
        )
        print(
            f"{name:<30}{row['events_per_s']:>12,.0f}{row['best']:>12,.0f}"
            f"{1e6 / row['events_per_s']:>8.2f}  {mark}"
        )
    print(f"target >= {TARGET_EVENTS_PER_S:,} events/s for both clients: {r['verdict']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench replay", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000, help="events in the trace")
    parser.add_argument("--runs", type=int, default=7, help="reads per figure, median (7)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print top N")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.events < 5 or args.runs < 1:
        parser.error("--events must be >= 5 and --runs >= 1")
    result = measure(args.events, args.runs, args.profile)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0
