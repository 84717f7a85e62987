"""Pickup latency of other Python queues vs ours: submit → the job's code starts, in one run.

The same figure as `bench/pickup.py`, measured for taskiq-redis, SAQ, Celery (Redis broker, solo
pool) and RQ (`SimpleWorker`), against the same server, then for our worker. Each peer lives in
its own virtualenv under the cache dir (their redis-py pins conflict with arq's), built on first
use and reused while it imports (`--fresh` rebuilds). A driver per peer
(`bench/peers_drivers/NAME.py`, run by that venv's python) starts the peer's worker in a
subprocess, enqueues one job at a time whose body pushes `time.time()` to a Redis list, and
prints the samples as JSON; pickup = that stamp - the time just before the enqueue call.

Same conditions for every system: before each submit, every driver (ours included) waits
`--settle-ms` plus a random 0-2 ms, so every worker is equally idle in its blocking pop (an
idle process's next round trip costs more than a hot one's: giving one system less idle time
than another biases the comparison). `--runs` runs alternate the order of the systems (reversed
every run); each row shows the median over runs of each run's p50 and p99, with the spread
[min-max] across runs. Each peer uses its own queue name / key prefix, and its keys are deleted
afterwards. A peer that cannot be installed or fails gets its reason in its row; the run goes
on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from ._common import ROOT, new_prefix, percentiles, server
from ._tools import scorecard

DRIVERS = ROOT / "bench" / "peers_drivers"
JITTER_S = 0.002  # as bench/pickup.py for our (blocking) worker
PIP_FLAGS = ("--disable-pip-version-check",)


@dataclass(frozen=True)
class Peer:
    name: str  # driver file, venv folder
    label: str
    requirements: tuple[str, ...]
    imports: str  # what a working venv can import
    quoted: tuple[float, float]  # p50/p99 ms the issue quotes, measured before


# hiredis for every peer, as our worker has it (redis[hiredis]); typing_extensions because
# saq 0.26 imports it without declaring it.
PEERS = (
    Peer("taskiq", "taskiq-redis", ("taskiq-redis", "hiredis"), "taskiq_redis", (1.5, 2.1)),
    Peer("saq", "SAQ", ("saq[redis,hiredis]", "typing_extensions"), "saq", (1.8, 2.6)),
    Peer("celery", "Celery solo", ("celery[redis]", "hiredis"), "celery", (2.4, 3.6)),
    Peer("rq", "RQ SimpleWorker", ("rq", "hiredis"), "rq", (3.1, 4.2)),
)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streaming-rag-bench" / "venvs"


def log(message: str) -> None:
    print(f"peers: {message}", file=sys.stderr, flush=True)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_works(peer: Peer, venv: Path) -> bool:
    """The venv was fully built for these requirements and still imports the peer."""
    marker = venv / ".bench-requirements"
    if not marker.exists() or marker.read_text() != json.dumps(peer.requirements):
        return False
    probe = [str(venv_python(venv)), "-I", "-c", f"import {peer.imports}, redis"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_venv(peer: Peer, cache: Path, fresh: bool) -> Path:
    """The peer's venv python, built (or rebuilt) when needed; raises with the reason."""
    venv = cache / peer.name
    if not fresh and venv_works(peer, venv):
        return venv_python(venv)
    log(f"building {venv} ({', '.join(peer.requirements)}) ...")
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv_python(venv)), "-m", "pip", "install", "-q", *PIP_FLAGS, *peer.requirements],
    )
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"install timed out: {' '.join(step[:4])}") from exc
        if done.returncode != 0:
            raise RuntimeError(f"install failed: {last_line(done.stderr or done.stdout)}")
    (venv / ".bench-requirements").write_text(json.dumps(peer.requirements))
    if not venv_works(peer, venv):
        raise RuntimeError(f"installed, but `import {peer.imports}` fails in {venv}")
    log(f"built {peer.name} in {time.monotonic() - started:.0f} s")
    return venv_python(venv)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def run_driver(
    python: Path, peer: Peer, url: str, jobs: int, settle_s: float, timeout_s: float
) -> dict[str, Any]:
    """Run the peer's driver; its version and pickup percentiles (ms), or raise with why."""
    prefix = new_prefix(f"peer-{peer.name}")
    spec = {
        "url": url,
        "prefix": prefix,
        "jobs": jobs,
        "warmup": 3,
        "jitter": JITTER_S,
        "settle": settle_s,
        "seed": 7,
    }
    command = [str(python), "-I", str(DRIVERS / f"{peer.name}.py"), "run", json.dumps(spec)]
    # own session: on a timeout, the driver and the worker it started go down together
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"driver timed out after {timeout_s:.0f} s") from exc
    finally:
        delete_keys(url, prefix)
    if proc.returncode != 0:
        raise RuntimeError(f"driver exit {proc.returncode}: {last_line(err)}")
    result = json.loads(out.strip().splitlines()[-1])
    samples: list[float] = result["samples_ms"]
    if len(samples) != jobs:
        raise RuntimeError(f"driver returned {len(samples)} of {jobs} samples")
    return {"version": result["version"], **percentiles(samples)}


def delete_keys(url: str, prefix: str) -> None:
    """Every key the peer left under its prefix (queues, jobs, stamps, worker records)."""
    try:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    except redis.RedisError as exc:
        log(f"could not clean {prefix}: {exc}")


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    cache: Path = args.cache_dir
    chosen = [peer for peer in PEERS if peer.name in args.peers]
    pythons: dict[str, Path] = {}
    rows: list[dict[str, Any]] = []
    for peer in chosen:  # installs first: the server only runs while measuring
        row: dict[str, Any] = {"peer": peer.label, "name": peer.name, "quoted_ms": peer.quoted}
        try:
            pythons[peer.name] = ensure_venv(peer, cache, args.fresh)
        except Exception as exc:
            row["error"] = str(exc)
        rows.append(row)
    ours: dict[str, Any] = {"version": "streaming-rag (this tree)"}
    settle_s = args.settle_ms / 1000
    runs: dict[str, list[dict[str, Any]]] = {peer.name: [] for peer in chosen}
    runs["ours"] = []
    with server() as (url, where):
        systems: list[Any] = [*chosen, None]  # None: ours
        for run in range(args.runs):
            for peer in systems if run % 2 == 0 else systems[::-1]:
                if peer is None:
                    if "error" in ours:
                        continue
                    log(f"run {run + 1}: measuring ours ({args.jobs} jobs) ...")
                    try:
                        from .pickup import measure

                        runs["ours"].append(measure(url, "fast", args.jobs, JITTER_S, settle_s))
                    except Exception as exc:
                        ours["error"] = f"{type(exc).__name__}: {exc}"
                    continue
                row = rows[chosen.index(peer)]
                if "error" in row:
                    continue
                log(f"run {run + 1}: measuring {peer.label} ({args.jobs} jobs) ...")
                try:
                    got = run_driver(pythons[peer.name], peer, url, args.jobs, settle_s, 90)
                    row["version"] = got.pop("version")
                    runs[peer.name].append(got)
                except Exception as exc:
                    row["error"] = str(exc)
    for peer, row in zip(chosen, rows, strict=True):
        if "error" not in row:
            row.update(_summary(runs[peer.name]))
    if "error" not in ours:
        ours.update(_summary(runs["ours"]))
    measured = [row for row in rows if "p50" in row]
    below = "p50" in ours and all(ours["p50"] < row["p50"] for row in measured)
    return {
        "server": where,
        "jobs": args.jobs,
        "runs": args.runs,
        "settle_ms": args.settle_ms,
        "peers": rows,
        "ours": ours,
        "peers_measured": len(measured),
        "ours_below_every_peer_p50": below and bool(measured),
    }


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median over runs of each run's p50 and p99, with their spreads."""
    p50s = [r["p50"] for r in results]
    p99s = [r["p99"] for r in results]
    return {
        "p50": statistics.median(p50s),
        "p99": statistics.median(p99s),
        "p50_range": [min(p50s), max(p50s)],
        "p99_range": [min(p99s), max(p99s)],
    }


def _cell(row: dict[str, Any], key: str) -> str:
    low, high = row[f"{key}_range"]
    return f"{row[key]:.2f} [{low:.2f}-{high:.2f}]"


def print_table(result: dict[str, Any]) -> None:
    print(
        f"peers: submit -> job code starts, ms, {result['jobs']} jobs each, one at a time, "
        f"{result['runs']} alternating runs ({result['server']}; every system idle "
        f"{result['settle_ms']:g} ms + 0-2 ms before each submit)"
    )
    print(f"{'peer':<17}{'version':<40}{'p50 [spread]':>22}{'p99 [spread]':>22}")
    for row in result["peers"]:
        if "error" in row:
            print(f"{row['peer']:<17}{'FAILED: ' + row['error']}")
            continue
        print(
            f"{row['peer']:<17}{row['version'][:39]:<40}"
            f"{_cell(row, 'p50'):>22}{_cell(row, 'p99'):>22}"
        )
    ours = result["ours"]
    if "error" in ours:
        print(f"{'ours':<17}FAILED: {ours['error']}")
    else:
        print(f"{'ours':<17}{ours['version']:<40}{_cell(ours, 'p50'):>22}{_cell(ours, 'p99'):>22}")
    total = len(result["peers"])
    count = result["peers_measured"]
    verdict = "YES" if result["ours_below_every_peer_p50"] else "NO"
    print(f"ours p50 below every peer's p50 ({count} of {total} peers measured): {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peers", description=__doc__)
    parser.add_argument("--jobs", type=int, default=100, help="jobs per queue (100)")
    parser.add_argument(
        "--peers",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        default=[peer.name for peer in PEERS],
        help="comma-separated subset of: " + ",".join(peer.name for peer in PEERS),
    )
    parser.add_argument(
        "--settle-ms",
        type=float,
        default=5.0,
        help="idle time before each submit, for every system (5)",
    )
    parser.add_argument("--runs", type=int, default=3, help="alternating runs per system (3)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache(), help="venvs live here")
    parser.add_argument("--fresh", action="store_true", help="rebuild the peers' venvs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    unknown = set(args.peers) - {peer.name for peer in PEERS}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    try:
        result = measure_all(args)
    except Exception as exc:  # no server: nothing to measure against
        print(f"peers: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    _record(result)
    return 0


def _record(result: dict[str, Any]) -> None:
    """The scorecard row: our pickup p50 beside the fastest peer's, same run."""
    ours = result["ours"]
    measured = [row for row in result["peers"] if "p50" in row]
    if "p50" not in ours or not measured:
        return
    best = min(measured, key=lambda row: row["p50"])
    scorecard(
        "pickup p50 (ms), same idle time for all",
        _cell(ours, "p50"),
        f"{best['peer']} {_cell(best, 'p50')} (fastest of {len(measured)} peers)",
        "below every peer",
        result["ours_below_every_peer_p50"],
    )
