"""`python -m bench all`: every benchmark in sequence, each in its own process.

Prints each benchmark's table as it finishes, its elapsed time, a summary (elapsed and
PASS/MISS per benchmark), and the scorecard: every row of the performance issue, measured,
beside its baseline or peer from the same run, with its target and verdict. `--json` prints
one JSON document instead: every benchmark's own `--json` result, its elapsed seconds and
exit status, the scorecard rows, plus the machine. Every benchmark runs against its own
embedded server unless `REDIS_URL` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from ._common import ROOT
from ._tools import SCORECARD_ENV, print_scorecard, read_scorecard

#: suite order; names not registered in `bench.__main__.BENCHMARKS` are skipped
ORDER = (
    "overhead",
    "pickup",
    "peers",
    "resumable",
    "ttft",
    "publish",
    "paced",
    "fanout",
    "capacity",
    "web",
    "replay",
    "memory",
    "outage",
    "cluster",
)


def names(only: list[str], skip: list[str]) -> list[str]:
    from .__main__ import BENCHMARKS

    known = [n for n in BENCHMARKS if n != "all"]
    ordered = [n for n in ORDER if n in known] + [n for n in known if n not in ORDER]
    unknown = [n for n in only + skip if n not in known]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return [n for n in ordered if (not only or n in only) and n not in skip]


def run_one(name: str, as_json: bool, scorecard: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench", name, *(["--json"] if as_json else [])]
    env = dict(os.environ)
    if scorecard:
        env[SCORECARD_ENV] = scorecard
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=env)
    out: dict[str, Any] = {
        "elapsed_s": round(time.perf_counter() - t0, 2),
        "returncode": proc.returncode,
        "stdout": proc.stdout,
    }
    if proc.returncode != 0:
        out["stderr"] = proc.stderr[-4000:]
    return out


def _split(csv: str) -> list[str]:
    return [n for n in csv.split(",") if n]


def _parse(stdout: str) -> Any:
    for text in (stdout, stdout.strip().splitlines()[-1] if stdout.strip() else ""):
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


def _verdicts(stdout: str) -> str:
    """`PASS x3, MISS x1` from the lines of a table that end with a verdict."""
    words = [line.split()[-1].strip("().:") for line in stdout.splitlines() if line.split()]
    words = [{"YES": "PASS", "NO": "MISS"}.get(w, w) for w in words]
    counts = {m: words.count(m) for m in ("PASS", "MISS") if m in words}
    return ", ".join(f"{m} x{n}" for m, n in counts.items()) or "-"


def _machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_url": "REDIS_URL" if os.environ.get("REDIS_URL") else "embedded",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench all", description=__doc__)
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    todo = names(_split(args.only), _split(args.skip))
    with tempfile.TemporaryDirectory(prefix="bench-scorecard-") as folder:
        return _run(todo, args.json, os.path.join(folder, "rows.jsonl"))


def _run(todo: list[str], as_json: bool, card: str) -> int:
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for name in todo:
        if not as_json:
            print(f"=== {name} ===", flush=True)
        res = run_one(name, as_json, card)
        results[name] = res
        if as_json:
            res["result"] = _parse(res.pop("stdout"))
            continue
        print(res["stdout"], end="" if res["stdout"].endswith("\n") else "\n")
        if res["returncode"]:
            print(f"FAILED (exit {res['returncode']}):\n{res.get('stderr', '')}")
        print(f"--- {name}: {res['elapsed_s']:.1f} s\n", flush=True)
    total = round(time.perf_counter() - t0, 2)
    failed = [n for n, r in results.items() if r["returncode"]]
    rows = read_scorecard(card)
    if as_json:
        doc = {
            "machine": _machine(),
            "total_s": total,
            "failed": failed,
            "scorecard": rows,
            "benchmarks": results,
        }
        print(json.dumps(doc))
        return 1 if failed else 0
    print(f"{'benchmark':<12}{'seconds':>9}  verdicts")
    for name, res in results.items():
        verdicts = "FAILED" if res["returncode"] else _verdicts(res["stdout"])
        print(f"{name:<12}{res['elapsed_s']:>9.1f}  {verdicts}")
    machine = _machine()
    print(f"{'total':<12}{total:>9.1f}  ({machine['cpus']} CPUs, Python {machine['python']})")
    print()
    print_scorecard(rows)
    return 1 if failed else 0
