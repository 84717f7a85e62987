"""RQ peer driver for `bench/peers.py` (runs with its virtualenv's python, `python -I`).

`python -I rq.py run SPEC_JSON` starts an RQ `SimpleWorker` (jobs run in the worker process,
no fork per job; blocked in `BLPOP` on the queue) in a subprocess, on a queue named after the
prefix, then enqueues one job at a time with `Queue.enqueue`; each job stamps `time.time()`
first thing and pushes it to `{prefix}:stamps`. Job ids carry the prefix and results are not
kept (`result_ttl=0`). Prints one JSON line: `{"version": ..., "samples_ms": [...]}`
(pickup = stamp - the time just before `enqueue`).
SPEC_JSON: url, prefix, jobs, warmup, jitter, settle, seed.
`-I` keeps this file's folder off `sys.path`, so `import rq` finds the library, not this file;
the worker runs this same file, so the job named `__main__.stamp` resolves to `stamp`.
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
from rq import Queue, SimpleWorker

STAMPS: Any = None  # the worker's client for pushing stamps
# by name: RQ refuses `__main__` function objects, but the worker runs this file as `__main__`
JOB = "__main__.stamp"


def stamp(dest: str) -> None:
    started = time.time()
    STAMPS.rpush(dest, repr(started))


def work(spec: dict[str, Any]) -> None:
    global STAMPS
    STAMPS = redis.Redis.from_url(spec["url"])
    connection = redis.Redis.from_url(spec["url"])
    queue = Queue(spec["prefix"], connection=connection)
    worker = SimpleWorker([queue], connection=connection, name=spec["prefix"])
    worker.work(logging_level="WARNING")  # returns on SIGTERM (warm shutdown)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    stamps_key = f"{spec['prefix']}:stamps"
    client = redis.Redis.from_url(spec["url"])
    queue = Queue(spec["prefix"], connection=redis.Redis.from_url(spec["url"]))
    rng = random.Random(spec["seed"])
    samples: list[float] = []
    worker = subprocess.Popen(
        [sys.executable, "-I", __file__, "worker", json.dumps(spec)], stdout=subprocess.DEVNULL
    )
    try:
        for i in range(spec["warmup"] + spec["jobs"]):
            measured = i >= spec["warmup"]
            if measured:
                time.sleep(spec["settle"] + rng.uniform(0, spec["jitter"]))
            before = time.time()
            queue.enqueue(JOB, stamps_key, job_id=f"{spec['prefix']}-{i}", result_ttl=0)
            popped = client.blpop([stamps_key], timeout=60 if i == 0 else 10)
            if popped is None:
                raise RuntimeError(f"job {i} did not start (worker exit code {worker.poll()})")
            if measured:
                samples.append((float(popped[1]) - before) * 1000)  # type: ignore[index]
    finally:
        worker.terminate()
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        queue.delete(delete_jobs=True)  # and its entry in `rq:queues`
        client.close()
    return {"version": f"rq {version('rq')}, redis-py {version('redis')}", "samples_ms": samples}


def main() -> None:
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    if mode == "worker":
        work(spec)
    else:
        print(json.dumps(run(spec)), flush=True)


if __name__ == "__main__":
    main()
