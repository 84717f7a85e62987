"""Ours vs Vercel's `resumable-stream` (Node): producer CPU per token, lag, late join, a
producer killed mid-answer; same server, same tokens, same pacing, same number of readers.

Ours: one worker process (`bench._worker fast`, `bench.apps:clock_app`); readers are
subscribers on one async client in this process. Theirs: a Node producer process using
`createResumableStreamContext` (two `redis` clients, the same server) feeding a ReadableStream
of the tokens, which it drains itself as an HTTP response would; readers are
`resumeExistingStream` consumers in one Node reader process
(`bench/resumable_driver/*.mjs`). Every token is the wall-clock time it was produced
(`time.time()` / `performance.timeOrigin + performance.now()`), so a reader's lag is receipt
minus token. Readers attach before the first token; the producer's CPU (/proc schedstat, the
same means for both) counts from the first token's release to the answer's end.

Per run, for each pace (no pacing, `--interval-ms` apart) and each reader count, both systems
run back to back, the order flipped every run. Then: a reader joining after an answer
finished (does it get the whole answer, how fast), and the producer SIGKILLed when the one
reader has half the tokens (what the reader sees within `--kill-wait` seconds). Medians
[min-max] over `--runs` runs. The Node packages (pinned in `bench.resumable_node.PACKAGES`)
are installed with npm into the user's cache dir on first use; without node/npm, or if the
install fails, the bench prints why and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._common import new_prefix, server
from ._common import worker_process as worker
from ._tools import drop_prefix, emit_json
from .resumable_node import NodeUnavailable, Theirs, check_node, default_cache, ensure_packages
from .resumable_ours import APP, Ours
from .resumable_report import format_table, record, summarize

LEVELS = (0, 1, 10, 100)
QUICK_LEVELS = (0, 10)
SYSTEMS = ("ours", "theirs")


def _levels(text: str) -> list[int]:
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of reader counts: {text!r}") from None
    if not levels or levels[0] < 0:
        raise argparse.ArgumentTypeError("reader counts must be >= 0")
    return levels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench resumable", description=__doc__)
    parser.add_argument("--tokens", type=int, default=500, help="tokens per answer (500)")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="paced tokens' gap (5)")
    parser.add_argument(
        "--levels", type=_levels, default=list(LEVELS), help="reader counts (0,1,10,100)"
    )
    parser.add_argument("--runs", type=int, default=3, help="alternating runs (3)")
    parser.add_argument(
        "--kill-wait", type=float, default=25.0, help="seconds a reader may wait after a kill"
    )
    parser.add_argument("--no-kill", action="store_true", help="skip the kill scenario")
    parser.add_argument("--quick", action="store_true", help="200 tokens, 1 run, 0 and 10 readers")
    parser.add_argument("--cache-dir", type=Path, default=default_cache(), help="npm installs")
    parser.add_argument("--fresh", action="store_true", help="reinstall the Node packages")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.runs, args.levels = 200, 1, list(QUICK_LEVELS)
    if args.tokens < 2 or args.runs < 1 or args.interval_ms <= 0 or args.kill_wait <= 0:
        parser.error("--tokens >= 2, --runs >= 1, --interval-ms > 0 and --kill-wait > 0")
    return args


def _call(method: Any, *args: Any) -> dict[str, Any]:
    """Runs one measurement, sync (theirs) or async (ours, on a fresh event loop)."""
    result = method(*args)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    out: dict[str, Any] = result
    return out


def _node_version() -> str:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def measure(args: argparse.Namespace, modules: Path) -> dict[str, Any]:
    """Every configuration, both systems, `args.runs` alternating runs: the raw samples."""
    paces = (0.0, args.interval_ms)
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        "levels": {f"{p:g}/{n}/{s}": [] for p in paces for n in args.levels for s in SYSTEMS},
        "late": {s: [] for s in SYSTEMS},
        "killed": {s: [] for s in SYSTEMS},
        "warmup": {s: [] for s in SYSTEMS},
    }
    errors: dict[str, str] = {}

    def attempt(name: str, group: str, key: str, method: Any, *call_args: Any) -> None:
        """One measurement; a system's first failure ends its part (the reason is kept)."""
        if name in errors:
            return
        try:
            samples[group][key].append(_call(method, *call_args))
        except Exception as exc:
            errors[name] = f"{group} {key}: {type(exc).__name__}: {exc}"[:300]

    with server() as (url, where):
        prefix = new_prefix("resumable")
        try:
            with worker(url, prefix, APP) as proc:
                systems: dict[str, Any] = {"ours": Ours(url, prefix, proc.pid)}
                theirs = systems["theirs"] = Theirs(url, prefix, modules)
                try:
                    for name, system in systems.items():  # warm-up, not reported
                        attempt(name, "warmup", name, system.run_level, args.tokens, 0.0, 1)
                    for run in range(args.runs):
                        order = SYSTEMS if run % 2 == 0 else SYSTEMS[::-1]
                        for pace in paces:
                            for n in args.levels:
                                for name in order:
                                    key = f"{pace:g}/{n}/{name}"
                                    method = systems[name].run_level
                                    attempt(name, "levels", key, method, args.tokens,
                                            pace, n)  # fmt: skip
                        for name in order:
                            method = systems[name].late_join
                            attempt(name, "late", name, method, args.tokens)
                        if args.no_kill:
                            continue
                        for name in order:
                            extra = (f"{prefix}-kill{run}",) if name == "ours" else ()
                            method = systems[name].killed
                            attempt(name, "killed", name, method, args.tokens,
                                    args.interval_ms, args.kill_wait, *extra)  # fmt: skip
                finally:
                    theirs.close()
        finally:
            drop_prefix(url, prefix)
    return {
        "server": where,
        "tokens": args.tokens,
        "interval_ms": args.interval_ms,
        "runs": args.runs,
        "levels": args.levels,
        "versions": {**theirs.versions, "node": _node_version()},
        "errors": errors,
        "samples": samples,
    }


def skipped(reason: str, as_json: bool) -> int:
    if as_json:
        emit_json({"skipped": True, "reason": reason})
    else:
        print(f"resumable: skipped: {reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = check_node()
    if reason is not None:
        return skipped(reason, args.json)
    try:
        modules = ensure_packages(args.cache_dir, args.fresh)
    except NodeUnavailable as exc:
        return skipped(str(exc), args.json)
    try:
        raw = measure(args, modules)
    except Exception as exc:  # no server, no worker: nothing to compare
        print(f"resumable: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    result = summarize(raw)
    record(result)
    if args.json:
        emit_json(result)
    else:
        print(format_table(result))
    return 0
