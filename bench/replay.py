"""Replay throughput: events/s reading and decoding a finished trace, sync and async clients.

Two traces of the same events are written directly in the wire format (pipelined XADDs, plus a
job hash with status `done`, as the worker's scripts leave them): one in wire format v2
(`wire.encode_event`, what workers write now) and one in v1 (`encode_event_v1`, the map
layout older workers wrote). Each holds RETRIEVAL_START, RETRIEVAL_DONE, GENERATION_START,
CHUNKs of "token ", GENERATION_DONE; 10,000 events by default.

Every reader reads its trace whole once per run, and the runs alternate (run 1 of every
reader, then run 2 of every reader, ...), so all share the machine's conditions; each figure
is the median of `--runs` with its spread (lowest-highest). The clients' figures
(`events(job_id)` / `aevents(job_id)` to the end, v2 trace) are the ones with a target; for
context: bare redis-py XRANGE (COUNT 1000, no decoding), XRANGE + `wire.decode_entry` per
entry, and raw XRANGE pages + `wire.decode_entries` on the v1 and on the v2 trace (the
wire formats compared in one run), and the sync client on the v1 trace. `--profile` prints the
top of a cProfile of one sync and one async read.
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
from streaming_rag.wire import JobKeys, decode_entries, decode_entry, encode_event, new_job_id
from streaming_rag.wire.codec import encode_event_v1
from streaming_rag_client import StreamingRAGClient
from streaming_rag_client._outages import raw_view

from ._common import new_prefix, server
from ._tools import drop_prefix, emit_json, scorecard, verdict

TARGET_EVENTS_PER_S = 300_000
PAGE = 1000
SYNC, ASYNC = "client events() (sync)", "client aevents() (async)"


def write_trace(
    r: redis.Redis,
    keys: JobKeys,
    events: int,
    encode: Callable[[EventType, Any, float], bytes] = encode_event,
) -> None:
    """A finished job's stream and hash, as a worker would have left them (`encode`: the
    wire format's encoder, v2 by default)."""
    docs = [{"content": "replayed document", "score": 0.9}]
    head = [
        encode(EventType.RETRIEVAL_START, {"query": "replay"}, 0.0),
        encode(EventType.RETRIEVAL_DONE, {"num_docs": 1, "docs": docs}, 0.0001),
        encode(EventType.GENERATION_START, {"prompt_chars": 120}, 0.0002),
    ]
    chunks = events - len(head) - 1
    done = encode(EventType.GENERATION_DONE, {"total_latency": 0.5}, 0.5)
    payloads = [*head, *(encode(EventType.CHUNK, "token ", 0.0003) for _ in range(chunks))]
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


def _next_cursor(entry_id: bytes) -> str:
    ms, seq = entry_id.decode().split("-")
    return f"{ms}-{int(seq) + 1}"


def _parsed_read(r: redis.Redis, keys: JobKeys, decode: bool) -> int:
    """redis-py's parsed XRANGE pages (a dict per entry), optionally `decode_entry` each."""
    n, cursor = 0, "-"
    while True:
        entries: Any = r.xrange(keys.events, cursor, "+", count=PAGE)
        if not entries:
            return n
        if decode:
            for entry_id, fields in entries:
                decode_entry(keys.job_id, entry_id, fields)
        n += len(entries)
        cursor = _next_cursor(entries[-1][0])


def _raw_read(raw: Any, keys: JobKeys) -> int:
    """Raw XRANGE pages (no response callback, as the client reads) + `decode_entries`."""
    n, cursor = 0, "-"
    while True:
        entries: Any = raw.xrange(keys.events, cursor, "+", count=PAGE)
        if not entries:
            return n
        n += len(decode_entries(keys.job_id, entries))
        cursor = _next_cursor(entries[-1][0])


async def _aread(rag: StreamingRAGClient, job_id: str) -> int:
    n = 0
    async for _ in rag.aevents(job_id):
        n += 1
    return n


def _rate(read: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = read()
    return n / (time.perf_counter() - t0), n


def _profile(label: str, read: Callable[[], Any], top: int) -> None:
    prof = cProfile.Profile()
    prof.runcall(read)
    print(f"\n--- cProfile: {label} (top {top} by own time) ---")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def _alternate(readers: dict[str, Callable[[], int]], runs: int) -> dict[str, dict[str, float]]:
    """Each reader once per run, the runs one after another; median and spread per reader."""
    rates: dict[str, list[float]] = {name: [] for name in readers}
    counts: dict[str, int] = {}
    for _ in range(runs):
        for name, read in readers.items():
            rate, counts[name] = _rate(read)
            rates[name].append(rate)
    return {
        name: {
            "events_per_s": statistics.median(values),
            "low": min(values),
            "high": max(values),
            "events": float(counts[name]),
        }
        for name, values in rates.items()
    }


def measure(events: int, runs: int, profile: int) -> dict[str, Any]:
    with server() as (url, where):
        prefix = new_prefix("replay")
        v2, v1 = JobKeys(prefix, new_job_id()), JobKeys(prefix, new_job_id())
        r = redis.Redis.from_url(url)
        raw = raw_view(r)
        loop = asyncio.new_event_loop()
        try:
            write_trace(r, v2, events)
            write_trace(r, v1, events, encode_event_v1)
            with StreamingRAGClient(url, prefix=prefix) as rag:
                readers: dict[str, Callable[[], int]] = {
                    "redis-py XRANGE (no decode)": lambda: _parsed_read(r, v2, False),
                    "XRANGE + wire.decode_entry": lambda: _parsed_read(r, v2, True),
                    "raw XRANGE + decode_entries, v1": lambda: _raw_read(raw, v1),
                    "raw XRANGE + decode_entries, v2": lambda: _raw_read(raw, v2),
                    "client events() (sync), v1": lambda: sum(1 for _ in rag.events(v1.job_id)),
                    SYNC: lambda: sum(1 for _ in rag.events(v2.job_id)),
                    ASYNC: lambda: loop.run_until_complete(_aread(rag, v2.job_id)),
                }
                rows = _alternate(readers, runs)
                if profile:
                    _profile("sync events()", readers[SYNC], profile)
                    _profile("async aevents()", readers[ASYNC], profile)
                loop.run_until_complete(rag.aclose())
        finally:
            loop.close()
            raw.close()
            r.close()
            drop_prefix(url, prefix)
    ok = all(rows[name]["events_per_s"] >= TARGET_EVENTS_PER_S for name in (SYNC, ASYNC))
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
        f"{r['runs']} alternating runs [lowest-highest] ({r['server']})"
    )
    print(f"{'reader':<34}{'ev/s':>10}  {'spread':<19}{'us/ev':>7}  target")
    for name, row in r["results"].items():
        mark = (
            f">= {TARGET_EVENTS_PER_S:,} {verdict(row['events_per_s'] >= TARGET_EVENTS_PER_S)}"
            if name in (SYNC, ASYNC)
            else "(context)"
        )
        spread = f"[{row['low']:,.0f}-{row['high']:,.0f}]"
        print(
            f"{name:<34}{row['events_per_s']:>10,.0f}  {spread:<19}"
            f"{1e6 / row['events_per_s']:>7.2f}  {mark}"
        )
    print(f"target >= {TARGET_EVENTS_PER_S:,} events/s for both clients: {r['verdict']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench replay", description=__doc__)
    parser.add_argument("--events", type=int, default=10_000, help="events in each trace")
    parser.add_argument("--runs", type=int, default=7, help="alternating runs, median (7)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print top N")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.events < 5 or args.runs < 3:
        parser.error("--events must be >= 5 and --runs >= 3")
    result = measure(args.events, args.runs, args.profile)
    _record(result)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0


def _record(r: dict[str, Any]) -> None:
    """The scorecard row: both clients on v2, beside the bare read and the v1 client."""
    rows = r["results"]

    def k(name: str) -> str:
        row = rows[name]
        return (
            f"{row['events_per_s'] / 1000:.0f}k [{row['low'] / 1000:.0f}-{row['high'] / 1000:.0f}]"
        )

    scorecard(
        "replay, sync / async client, wire v2 (ev/s)",
        f"{k(SYNC)} / {k(ASYNC)}",
        f"XRANGE alone {k('redis-py XRANGE (no decode)')}; "
        f"sync on v1 {k('client events() (sync), v1')}",
        f">= {TARGET_EVENTS_PER_S // 1000}k both",
        r["verdict"] == "PASS",
    )
