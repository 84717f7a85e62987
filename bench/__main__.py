"""`python -m bench [NAME] [ARGS]`: run a benchmark (default: overhead)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "overhead": ("bench.overhead", "per-chunk cost of the streaming surfaces (default)"),
    "pickup": ("bench.pickup", "submit -> job start, ours vs stock arq"),
    "peers": ("bench.peers", "submit -> job start: taskiq-redis, SAQ, Celery, RQ vs ours"),
    "resumable": (
        "bench.resumable",
        "producer CPU, lag, late join, kill: ours vs Vercel's resumable-stream (Node)",
    ),
    "fanout": ("bench.fanout", "lag and CPU with 1..1,000 subscribers of one job"),
    "capacity": ("bench.capacity", "100..2,000 concurrent answers at 50 tok/s, one worker"),
    "web": ("bench.web", "HTTP bridge: CPU per SSE message at 100..1,000 watchers, burst"),
    "ttft": ("bench.ttft", "submit -> first CHUNK at a subscriber, vs in-process"),
    "publish": ("bench.publish", "events/s one worker publishes, vs raw redis-py XADD"),
    "paced": ("bench.paced", "worker and server CPU per token, tokens 5 ms apart, vs a PING"),
    "replay": ("bench.replay", "events/s reading a finished 10,000-event trace"),
    "memory": ("bench.memory", "Redis bytes per event / per job, worker RSS over 10,000 jobs"),
    "outage": ("bench.outage", "a Redis restart / crash mid-answer: recovery time, events lost"),
    "cluster": ("bench.cluster", "events/s and p99 lag with the events on 1 vs 3 cluster shards"),
    "all": ("bench.run_all", "every benchmark in sequence (--json: one document)"),
}
DEFAULT = "overhead"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m bench [NAME] [ARGS...]   (python -m bench NAME --help)\n")
        print("benchmarks:")
        for name, (_, about) in BENCHMARKS.items():
            print(f"  {name:<12}{about}")
        return 0
    name = DEFAULT
    if args and not args[0].startswith("-"):
        name, args = args[0], args[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name][0])
    result: int = module.main(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
