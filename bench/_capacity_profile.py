"""`python -m bench capacity --profile`: one run at N = 1,000 with the worker's stacks sampled.

The worker process runs `bench._worker` with `BENCH_WORKER_PROFILE` set: a CPU-time stack
sampler (`bench._sampling`) that the run starts when the gate opens and stops once the last
answer ended, so every token is both produced and published inside it (a worker that falls
behind publishes after the steady window). Each function's share of the samples, times the
worker's measured CPU per delivered token over that span, is its cost in µs per token
("own": in the function itself and the C calls it makes; "cum": with everything it calls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from ._capacity_run import APP, Plan, lease_config, measure
from ._common import new_prefix, server
from ._common import worker_process as worker
from ._sampling import top_costs
from ._tools import drop_prefix, emit_json

#: frames every sample passes through (the event loop running a task), left out of "inclusive"
LOOP_FRAMES = (
    "<module>",
    "main",
    "profiled",
    "run ",
    "Runner.",
    "BaseEventLoop.",
    "Handle._run",
    "Worker.",
    "StreamingWorker.",
)


def profile(cfg: dict[str, Any], args: argparse.Namespace) -> int:
    n = cfg["levels"][0]
    plan = Plan(n, cfg["tokens"], args.interval_ms / 1000, cfg["skip_s"], ramp_s=args.ramp_s)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker-stacks.json"
        with server() as (url, where):
            prefix = new_prefix("capacity")
            try:
                env = {"BENCH_WORKER_PROFILE": str(out)}
                config = {"concurrency": n + 10, **lease_config(args.lease_s)}
                with worker(url, prefix, APP, env=env, **config) as proc:
                    run = asyncio.run(measure(url, prefix, proc.pid, plan, profile=True))
            finally:
                drop_prefix(url, prefix)
        if not out.exists():
            raise RuntimeError("the profiled worker wrote no stack samples")
        stacks = json.loads(out.read_text())
    tokens = run["delivered"]
    cpu_s = run["worker_us_per_token_all"] * tokens / 1e6
    rows = top_costs(stacks, cpu_s, tokens)
    inclusive = [
        r
        for r in top_costs(stacks, cpu_s, tokens, 60, by="cumulative")
        if not r["function"].startswith(LOOP_FRAMES)
    ][:15]
    if args.json:
        emit_json(
            {
                "server": where,
                "answers": n,
                "run": run,
                "samples": stacks["samples"],
                "top": rows,
                "inclusive": inclusive,
            }
        )
        return 0
    lag = run["lag_ms"]["p99"]
    print(
        f"capacity --profile: {n:,} answers x {plan.tokens} tokens ({where}); gate to end: "
        f"worker {run['worker_us_per_token_all']:.1f} µs per delivered token; steady window: "
        f"{run['worker_cpu_pct']:.0f}% of a core, recv/prod {run['keeps_up']:.0%}, lag p99 "
        f"{lag:.0f} ms; {run['failed']} answers failed; {stacks['samples']:,} CPU-time samples"
    )
    print(f"{'own %':>7}{'own µs/tok':>12}{'cum µs/tok':>12}  function")
    for r in rows:
        print(
            f"{r['own_pct']:>7.1f}{r['own_us_per_token']:>12.2f}{r['cum_us_per_token']:>12.2f}  "
            f"{r['function']}"
        )
    print("inclusive (with everything each calls; event-loop frames left out):")
    for r in inclusive:
        print(f"{'':>19}{r['cum_us_per_token']:>12.2f}  {r['function']}")
    return 0
