"""Capacity: N concurrent answers at 50 tokens/s each through ONE worker process.

N = 100, 500, 1,000, 2,000 answers (the worker's max_jobs >= N) are submitted at once (or
over `--ramp-s`); once every answer is running (its GENERATION_START seen) a gate opens and
each yields 150 tokens due 20 ms apart on a wall-clock schedule (phases spread over the 20
ms), every token carrying when it was due and when the job yielded it. All N subscribers (one
per answer) live in this one client process and share the async client's fan-out reader.
Over the steady window (from 1 s after the first tokens are due to just before the earliest
answer's last token) it measures the worker's, the server's and this client's CPU per token,
each process's CPU% of one core, the lag at the subscribers (receive - produce; and receive
- due, which adds the worker's own delay), tokens delivered vs expected, failed answers, and
how many answers were running when the tokens started. One extra row runs N = 1,000 with the
publisher's coalescing window (`--flush-ms`, default 10) to show its trade. `--profile`
instead runs N = 1,000 once with the worker's stacks sampled over the steady window and
prints its top costs per token.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

from ._capacity_run import APP, Plan, lease_config, measure
from ._common import new_prefix, server
from ._common import worker_process as worker
from ._tools import drop_prefix, emit_json, scorecard, verdict

LEVELS = (100, 500, 1000, 2000)
QUICK_LEVELS = (100, 500)
TARGET_ANSWERS = 1000
TARGET_P99_MS = 10.0
TARGET = "1,000 concurrent answers per worker process with p99 lag <= 10 ms"
#: figures a row quotes as the median [min-max] of its runs, each read from a run's result
FIGURES: dict[str, Callable[[dict[str, Any]], float]] = {
    "worker_us_per_token": lambda r: float(r["worker_us_per_token"]),
    "worker_us_per_token_all": lambda r: float(r.get("worker_us_per_token_all", 0.0)),
    "server_us_per_token_all": lambda r: float(r.get("server_us_per_token_all", 0.0)),
    "client_us_per_token_all": lambda r: float(r.get("client_us_per_token_all", 0.0)),
    "server_us_per_token": lambda r: float(r["server_us_per_token"]),
    "client_us_per_token": lambda r: float(r["client_us_per_token"]),
    "worker_cpu_pct": lambda r: float(r["worker_cpu_pct"]),
    "server_cpu_pct": lambda r: float(r["server_cpu_pct"]),
    "client_cpu_pct": lambda r: float(r["client_cpu_pct"]),
    "worker_wait_pct": lambda r: float(r.get("worker_wait_pct", 0.0)),
    "keeps_up_pct": lambda r: float(r["keeps_up"]) * 100,
    "lag_p50_ms": lambda r: float(r["lag_ms"]["p50"]),
    "lag_p99_ms": lambda r: float(r["lag_ms"]["p99"]),
    "due_p99_ms": lambda r: float(r["due_lag_ms"]["p99"]),
}


def parse_levels(text: str) -> list[int]:
    """`"100,500,1k"` -> `[100, 500, 1000]`: positive counts, `k` for thousands, `_`/`,`-free
    digits; raises `argparse.ArgumentTypeError` on anything else."""
    levels = []
    for word in (w.strip().lower() for w in text.split(",")):
        scale = 1000 if word.endswith("k") else 1
        digits = word[:-1] if scale > 1 else word
        if not digits.isdigit() or int(digits) * scale < 1:
            raise argparse.ArgumentTypeError(f"not a positive answer count: {word!r}")
        levels.append(int(digits) * scale)
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench capacity", description=__doc__)
    parser.add_argument("--levels", type=parse_levels, help="answer counts (100,500,1000,2000)")
    parser.add_argument("--quick", action="store_true", help="100 and 500, 100 tokens each")
    parser.add_argument("--runs", type=int, help="runs per level (default 3; 1 for N >= 1,000)")
    parser.add_argument("--tokens", type=int, help="tokens per answer (150; --quick 100)")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="token pace (20 ms)")
    parser.add_argument("--skip-s", type=float, help="seconds left out before the window (1)")
    parser.add_argument(
        "--ramp-s", type=float, default=0.0, help="submit over this many seconds (0: at once)"
    )
    parser.add_argument(
        "--lease-s", type=float, help="the worker's job lease (its default: 3 s; a diagnosis aid)"
    )
    parser.add_argument("--flush-ms", type=float, default=10.0, help="the extra row's flush_ms")
    parser.add_argument("--no-flush-row", action="store_true", help="skip the flush_ms row")
    parser.add_argument("--profile", action="store_true", help="cProfile the worker at 1,000")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Levels, runs per level, tokens and skip from the parsed arguments (defaults applied)."""
    quick = bool(args.quick)
    levels = args.levels or list(QUICK_LEVELS if quick else LEVELS)
    if args.profile:
        levels = [TARGET_ANSWERS] if args.levels is None else levels[-1:]
    tokens = args.tokens or (100 if quick else 150)
    skip = args.skip_s if args.skip_s is not None else (0.5 if quick else 1.0)
    runs = {n: args.runs or (1 if args.profile or n >= 1000 else 3) for n in levels}
    flush_at = None
    if not (args.no_flush_row or args.profile):
        flush_at = TARGET_ANSWERS if TARGET_ANSWERS in levels else max(levels)
    return {"levels": levels, "runs": runs, "tokens": tokens, "skip_s": skip, "flush_at": flush_at}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(answers: int, flush_ms: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from a level's runs: each figure as median / min / max, the totals summed,
    and the verdict against the target (only the 1,000-answer default-flush row counts)."""
    figures = {k: _spread([read(r) for r in runs]) for k, read in FIGURES.items()}
    delivered = sum(r["delivered"] for r in runs)
    expected = sum(r["expected"] for r in runs)
    all_ran = all(r["running_in_window"] == answers for r in runs)
    ok = (
        figures["lag_p99_ms"]["median"] <= TARGET_P99_MS
        and delivered == expected
        and all_ran
        and not any(r["failed"] for r in runs)
    )
    return {
        "answers": answers,
        "flush_ms": flush_ms,
        "runs": len(runs),
        **figures,
        "delivered": delivered,
        "expected": expected,
        "running_in_window": min(r["running_in_window"] for r in runs),
        "ready_before_start": min(r.get("ready_before_start", answers) for r in runs),
        "failed": sum(r["failed"] for r in runs),
        "failures": sorted({f for r in runs for f in r["failures"]}),
        "meets_target": ok,
        "counts": answers == TARGET_ANSWERS and flush_ms == 0,
        "raw": runs,
    }


def _fig(row: dict[str, Any], key: str, digits: int = 0) -> str:
    f = row[key]
    if row["runs"] == 1:
        return f"{f['median']:.{digits}f}"
    return f"{f['median']:.{digits}f} [{f['min']:.{digits}f}-{f['max']:.{digits}f}]"


HEADER = (
    "N",
    "flush",
    "runs",
    "worker µs/tok",
    "all: worker",
    "server",
    "client",
    "worker CPU%",
    "waited%",
    "client CPU%",
    "recv/prod %",
    "lag p50 ms",
    "p99",
    "due p99",
    "lost",
    "failed",
    "ready",
    "ran",
    "p99 <= 10 ms",
)
NOTES = (
    "worker µs/tok: its CPU over the steady window / tokens produced in it; all: each process's "
    "CPU from the gate opening to the last answer's end / tokens delivered (the same when the "
    "worker keeps up; the honest figure when it falls behind); lag: receive - produce at the "
    "subscriber; due p99: receive - the time the token was due (adds the worker's own delay); "
    "CPU% of one core; waited%: the worker's time runnable but waiting for a CPU (others' work "
    "on a shared machine); recv/prod: tokens received / produced in the window (below 100: the "
    "worker falls behind and a backlog grows); lost: tokens expected - delivered; ready: "
    "answers running (waiting for their first token) when the tokens started; ran: answers "
    "that started before the window and delivered every token"
)


def cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One row's printed cells, in `HEADER` order."""
    return (
        f"{r['answers']:,}",
        f"{r['flush_ms']:g}",
        str(r["runs"]),
        _fig(r, "worker_us_per_token"),
        _fig(r, "worker_us_per_token_all"),
        _fig(r, "server_us_per_token_all"),
        _fig(r, "client_us_per_token_all"),
        _fig(r, "worker_cpu_pct"),
        _fig(r, "worker_wait_pct"),
        _fig(r, "client_cpu_pct"),
        _fig(r, "keeps_up_pct"),
        _fig(r, "lag_p50_ms", 1),
        _fig(r, "lag_p99_ms", 1),
        _fig(r, "due_p99_ms", 1),
        str(r["expected"] - r["delivered"]),
        str(r["failed"]),
        f"{r['ready_before_start']:,}",
        f"{r['running_in_window']:,}",
        verdict(r["meets_target"]),
    )


def table(rows: list[dict[str, Any]], where: str, tokens: int, interval_ms: float) -> Iterator[str]:
    """The printed table (columns aligned), the notes, then the verdict line for the target."""
    yield (
        f"capacity: N answers at once, {tokens} tokens {interval_ms:g} ms apart each, one worker "
        f"process, N subscribers in one client process ({where}); median [min-max] over runs"
    )
    lines = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    for line in lines:
        yield "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
    yield NOTES
    for r in rows:
        if r["failures"]:
            yield f"N = {r['answers']:,}: failed answers' stages / errors: " + ", ".join(
                r["failures"]
            )
    if any(r["runs"] == 1 for r in rows):
        yield "rows with runs 1: one run each (a run at N >= 1,000 is long); --runs to repeat"
    counted = [r for r in rows if r["counts"]]
    if counted:
        yield f"{TARGET}: {verdict(all(r['meets_target'] for r in counted))}"
    else:
        yield f"{TARGET}: not measured (no N = 1,000 row at flush_ms 0)"


def run_levels(cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every level's runs (alternating: run 1 of every level, then run 2, ...) and the flush row,
    each against its own worker (max_jobs >= the largest N); every worker's keys dropped."""
    interval = args.interval_ms / 1000
    top = max(cfg["levels"])
    flushes = [0.0] + ([args.flush_ms] if cfg["flush_at"] is not None else [])
    raw: dict[tuple[int, float], list[dict[str, Any]]] = {}
    with server() as (url, where), ExitStack() as stack:
        workers = {}
        for flush in flushes:
            prefix = new_prefix("capacity")
            stack.callback(drop_prefix, url, prefix)
            config = {"concurrency": top + 10, "flush_ms": flush, **lease_config(args.lease_s)}
            proc = stack.enter_context(worker(url, prefix, APP, **config))
            workers[flush] = (prefix, proc.pid)
        todo = [(n, 0.0) for n in cfg["levels"]]
        if cfg["flush_at"] is not None:
            todo.append((cfg["flush_at"], args.flush_ms))
        for i in range(max(cfg["runs"].values())):
            for n, flush in todo:
                if i >= cfg["runs"][n]:
                    continue
                prefix, pid = workers[flush]
                plan = Plan(n, cfg["tokens"], interval, cfg["skip_s"], ramp_s=args.ramp_s)
                raw.setdefault((n, flush), []).append(asyncio.run(measure(url, prefix, pid, plan)))
                drop_prefix(url, prefix)
    rows = [aggregate(n, flush, runs) for (n, flush), runs in raw.items()]
    return {
        "server": where,
        "tokens": cfg["tokens"],
        "interval_ms": args.interval_ms,
        "lease_s": args.lease_s,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = settings(args)
    if args.profile:
        from ._capacity_profile import profile

        return profile(cfg, args)
    result = run_levels(cfg, args)
    counted = [r for r in result["rows"] if r["counts"]]
    result["target"] = TARGET
    result["verdict"] = verdict(bool(counted) and all(r["meets_target"] for r in counted))
    _record(result)
    if args.json:
        emit_json(result)
        return 0
    for line in table(result["rows"], result["server"], result["tokens"], args.interval_ms):
        print(line)
    if args.lease_s is not None:
        print(f"the worker's job lease: {args.lease_s:g} s (--lease-s; default 3 s)")
    return 0


def _record(result: dict[str, Any]) -> None:
    """The scorecard row: p99 lag per N (flush_ms 0), the N = 1,000 row against the target,
    beside the worker's CPU per token and load."""
    rows = sorted((r for r in result["rows"] if not r["flush_ms"]), key=lambda r: r["answers"])
    if not rows:
        return
    lags = ", ".join(f"N={r['answers']:,}: {_fig(r, 'lag_p99_ms', 1)}" for r in rows)
    cpu = ", ".join(
        f"N={r['answers']:,}: {_fig(r, 'worker_us_per_token_all')} µs/tok "
        f"{_fig(r, 'worker_cpu_pct')}% CPU"
        for r in rows
    )
    counted = [r for r in rows if r["counts"]]
    scorecard(
        "concurrent answers at 50 tok/s through one worker: p99 lag (ms)",
        lags,
        f"worker {cpu}",
        "1,000 per worker process at p99 <= 10 ms",
        bool(counted) and all(r["meets_target"] for r in counted) if counted else None,
    )
