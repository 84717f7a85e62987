"""SAQ peer driver for `bench/peers.py` (runs with the SAQ virtualenv's python, `python -I`).

`python -I saq.py run SPEC_JSON` starts a SAQ worker in a subprocess (`Worker` with its
defaults: `concurrency=10` tasks each blocked in `BLMOVE queued -> active` with no timeout),
then enqueues one job at a time with `Queue.enqueue`; each job stamps `time.time()` first
thing and pushes it to `{prefix}:stamps`. Prints one JSON line:
`{"version": ..., "samples_ms": [...]}` (pickup = stamp - the time just before enqueue).
SPEC_JSON: url, prefix (also the SAQ queue name), jobs, warmup, jitter, settle, seed.
`-I` keeps this file's folder off `sys.path`, so `import saq` finds the library, not this file.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from importlib.metadata import version
from typing import Any

from redis import asyncio as aioredis
from saq import Queue, Worker

STAMPS: Any = None  # the worker's client for pushing stamps


async def stamp(ctx: dict[str, Any], *, dest: str) -> None:
    started = time.time()
    await STAMPS.rpush(dest, repr(started))


async def work(spec: dict[str, Any]) -> None:
    global STAMPS
    STAMPS = aioredis.from_url(spec["url"])
    queue = Queue.from_url(spec["url"], name=spec["prefix"])
    await Worker(queue, functions=[stamp]).start()  # returns on SIGTERM/SIGINT


async def run(spec: dict[str, Any], worker: subprocess.Popen[bytes]) -> dict[str, Any]:
    stamps_key = f"{spec['prefix']}:stamps"
    client = aioredis.from_url(spec["url"])
    queue = Queue.from_url(spec["url"], name=spec["prefix"])
    await queue.connect()
    rng = random.Random(spec["seed"])
    samples: list[float] = []
    try:
        for i in range(spec["warmup"] + spec["jobs"]):
            measured = i >= spec["warmup"]
            if measured:
                await asyncio.sleep(spec["settle"] + rng.uniform(0, spec["jitter"]))
            before = time.time()
            await queue.enqueue("stamp", dest=stamps_key)
            popped = await client.blpop([stamps_key], timeout=60 if i == 0 else 10)
            if popped is None:
                raise RuntimeError(f"job {i} did not start (worker exit code {worker.poll()})")
            if measured:
                samples.append((float(popped[1]) - before) * 1000)
    finally:
        await queue.disconnect()
        await client.aclose()
    return {"version": f"saq {version('saq')}, redis-py {version('redis')}", "samples_ms": samples}


def start_worker(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-I", __file__, "worker", json.dumps(spec)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(10)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def main() -> None:
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    if mode == "worker":
        asyncio.run(work(spec))
    else:
        worker = start_worker(spec)
        try:
            result = asyncio.run(run(spec, worker))
        finally:
            stop_worker(worker)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
