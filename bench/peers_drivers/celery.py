"""Celery peer driver for `bench/peers.py` (runs with its virtualenv's python, `python -I`).

`python -I celery.py run SPEC_JSON` starts a Celery worker in a subprocess with the Redis
broker and the solo pool (`worker -P solo`, tasks run in the consumer's own thread; mingle,
gossip and heartbeat off so it starts fast), on a queue named after the prefix, then sends one
task at a time with `apply_async`; each task stamps `time.time()` first thing and pushes it to
`{prefix}:stamps`. Results are ignored (no result backend). Prints one JSON line:
`{"version": ..., "samples_ms": [...]}` (pickup = stamp - the time just before `apply_async`).
SPEC_JSON: url, prefix, jobs, warmup, jitter, settle, seed.
`-I` keeps this file's folder off `sys.path`, so `import celery` finds the library.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from importlib.metadata import version
from typing import Any

import redis
from celery import Celery

SPEC: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
QUEUE = SPEC.get("prefix", "celery")
app = Celery("bench_peer", broker=SPEC.get("url"))
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # no pidbox (remote control): it would leave kombu's global binding keys on the server
    worker_enable_remote_control=False,
)
# no mingle/gossip/heartbeat: nothing but the task traffic, and a fast start
QUIET = ("--without-mingle", "--without-gossip", "--without-heartbeat")
STAMPS: Any = None  # the worker's client for pushing stamps


@app.task(name="bench_peer.stamp")
def stamp(dest: str) -> None:
    started = time.time()
    STAMPS.rpush(dest, repr(started))


def work() -> None:
    global STAMPS
    STAMPS = redis.Redis.from_url(SPEC["url"])
    app.worker_main(
        ["worker", "-P", "solo", "-Q", QUEUE, "-l", "WARNING", "-n", f"{QUEUE}@%h", *QUIET]
    )


def run() -> dict[str, Any]:
    stamps_key = f"{SPEC['prefix']}:stamps"
    client = redis.Redis.from_url(SPEC["url"])
    rng = random.Random(SPEC["seed"])
    samples: list[float] = []
    worker = subprocess.Popen(
        [sys.executable, "-I", __file__, "worker", json.dumps(SPEC)], stdout=subprocess.DEVNULL
    )
    try:
        for i in range(SPEC["warmup"] + SPEC["jobs"]):
            measured = i >= SPEC["warmup"]
            if measured:
                time.sleep(SPEC["settle"] + rng.uniform(0, SPEC["jitter"]))
            before = time.time()
            stamp.apply_async((stamps_key,))
            popped = client.blpop([stamps_key], timeout=60 if i == 0 else 10)
            if popped is None:
                raise RuntimeError(f"task {i} did not start (worker exit code {worker.poll()})")
            if measured:
                samples.append((float(popped[1]) - before) * 1000)  # type: ignore[index]
    finally:
        worker.terminate()  # warm shutdown
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        client.close()
    versions = f"celery {version('celery')} (kombu {version('kombu')})"
    return {"version": f"{versions}, redis-py {version('redis')}", "samples_ms": samples}


def main() -> None:
    if sys.argv[1] == "worker":
        work()
    else:
        print(json.dumps(run()), flush=True)


if __name__ == "__main__":
    main()
