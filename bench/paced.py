"""Paced tokens: worker and server CPU per token for one answer whose LLM paces its tokens 5 ms
apart (the realistic case: nothing to coalesce), with and without the `flush_ms` window.

One worker process per setting (`flush_ms` 0, the default, and 10) serves `bench.apps:
clock_app`; each run submits one answer of `--tokens` tokens `--interval-ms` apart with no
subscriber and waits for its end. CPU: the worker process's (`/proc/<pid>/schedstat`) and the
server's (INFO cpu) over the answer, per token. The settings alternate run by run. Baselines in
the same run: the server's CPU for one PING round trip, and this process's CPU for one
awaited redis-py PING, the PINGs paced like the tokens (the floor of one round trip per token
on this machine, including waking from idle for each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

import redis
import redis.asyncio

from streaming_rag.wire import JobKeys
from streaming_rag_client import StreamingRAGClient

from ._common import cpu_seconds, new_prefix, server, server_cpu_seconds, worker_process
from ._tools import drop_prefix, emit_json, scorecard, spread, verdict

APP = "bench.apps:clock_app"
TARGET_SERVER_US = 20.0
FLUSHES = (0.0, 10.0)


def _answer(url: str, prefix: str, pid: int, rag: StreamingRAGClient, r: Any, q: str) -> Any:
    w0, s0 = cpu_seconds(pid), server_cpu_seconds(url)
    keys = JobKeys(prefix, rag.submit(q))
    deadline = time.monotonic() + 120
    while r.hget(keys.meta, "status") not in (b"done", b"failed", b"cancelled"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {keys.job_id} did not finish within 120 s")
        time.sleep(0.02)
    return cpu_seconds(pid) - w0, server_cpu_seconds(url) - s0


async def _pings(url: str, n: int, interval_s: float) -> tuple[float, float]:
    """(client µs, server µs) of CPU per awaited PING, the PINGs paced like the tokens (a
    server woken from idle for each costs more than one in a tight loop)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.ping()
        s0, c0 = server_cpu_seconds(url), time.process_time()
        for _ in range(n):
            await asyncio.sleep(interval_s)
            await client.ping()
        return (time.process_time() - c0) * 1e6 / n, (server_cpu_seconds(url) - s0) * 1e6 / n
    finally:
        await client.aclose()


def measure(tokens: int, interval_ms: float, runs: int) -> dict[str, Any]:
    query = f"paced tokens={tokens} interval={interval_ms / 1000:g}"
    rows: dict[str, dict[str, list[float]]] = {
        f"{f:g}": {"worker_us": [], "server_us": []} for f in FLUSHES
    }
    pings: dict[str, list[float]] = {"client_us": [], "server_us": []}
    with server() as (url, where), contextlib.ExitStack() as stack:
        r = redis.Redis.from_url(url)
        stack.callback(r.close)
        procs = {}
        for flush in FLUSHES:
            prefix = new_prefix(f"paced{flush:g}")
            stack.callback(drop_prefix, url, prefix)
            proc = stack.enter_context(worker_process(url, prefix, APP, flush_ms=flush))
            rag = stack.enter_context(StreamingRAGClient(url, prefix=prefix))
            _answer(url, prefix, proc.pid, rag, r, "warm-up tokens=5")
            procs[flush] = (prefix, proc.pid, rag)
        for run in range(runs):
            for flush in FLUSHES if run % 2 == 0 else FLUSHES[::-1]:
                prefix, pid, rag = procs[flush]
                worker_s, server_s = _answer(url, prefix, pid, rag, r, query)
                rows[f"{flush:g}"]["worker_us"].append(worker_s * 1e6 / tokens)
                rows[f"{flush:g}"]["server_us"].append(server_s * 1e6 / tokens)
            client_us, server_us = asyncio.run(_pings(url, tokens, interval_ms / 1000))
            pings["client_us"].append(client_us)
            pings["server_us"].append(server_us)
    default = statistics.median(rows["0"]["server_us"])
    return {
        "server": where,
        "tokens": tokens,
        "interval_ms": interval_ms,
        "runs": runs,
        "flush_ms": rows,
        "ping": pings,
        "target_server_us": TARGET_SERVER_US,
        "verdict": verdict(default <= TARGET_SERVER_US),
    }


def _print(r: dict[str, Any]) -> None:
    print(
        f"paced: one answer, {r['tokens']} tokens {r['interval_ms']:g} ms apart, no subscriber "
        f"({r['server']}; {r['runs']} alternating runs: median [min-max])"
    )
    print(f"{'flush_ms':<10}{'worker µs/token':>24}{'server µs/token':>24}")
    for flush, row in r["flush_ms"].items():
        print(
            f"{flush:<10}{spread(row['worker_us'], '{:.0f}'):>24}"
            f"{spread(row['server_us'], '{:.0f}'):>24}"
        )
    client, srv = spread(r["ping"]["client_us"], "{:.0f}"), spread(r["ping"]["server_us"], "{:.0f}")
    note = "(one PING per pace, its sleep included: client / server CPU)"
    print(f"{'1 PING':<10}{client:>24}{srv:>24}   {note}")
    print(
        f"server CPU per token at the default flush_ms 0: target <= {TARGET_SERVER_US:g} µs: "
        f"{r['verdict']}"
    )


def _record(r: dict[str, Any]) -> None:
    row, windowed, p = r["flush_ms"]["0"], r["flush_ms"]["10"], r["ping"]
    scorecard(
        f"server CPU per token, {r['interval_ms']:g} ms pace (µs)",
        f"{spread(row['server_us'], '{:.0f}')}; flush_ms 10: "
        f"{spread(windowed['server_us'], '{:.0f}')}",
        f"one PING per {r['interval_ms']:g} ms: {spread(p['server_us'], '{:.0f}')}",
        f"<= {TARGET_SERVER_US:g}",
        r["verdict"] == "PASS",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench paced", description=__doc__)
    parser.add_argument("--tokens", type=int, default=400, help="tokens per answer (400)")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="token pace (5 ms)")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs (3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.runs < 1 or args.interval_ms < 0:
        parser.error("--tokens and --runs must be >= 1, --interval-ms >= 0")
    result = measure(args.tokens, args.interval_ms, args.runs)
    _record(result)
    if args.json:
        emit_json(result)
    else:
        _print(result)
    return 0
