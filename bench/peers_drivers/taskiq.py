"""taskiq-redis peer driver for `bench/peers.py` (runs with its virtualenv's python, `python -I`).

`python -I taskiq.py run SPEC_JSON` starts a taskiq receiver in a subprocess
(`taskiq.api.run_receiver_task`, the programmatic twin of `taskiq worker`) on a
`ListQueueBroker` (the worker blocks in `BRPOP` with no timeout; `socket_timeout=None` so the
blocked connection is never cut), then kicks one task at a time with `.kiq()`; each task stamps
`time.time()` first thing and pushes it to `{prefix}:stamps`. Prints one JSON line:
`{"version": ..., "samples_ms": [...]}` (pickup = stamp - the time just before `.kiq()`).
SPEC_JSON: url, prefix (also the list's name), jobs, warmup, jitter, settle, seed.
`-I` keeps this file's folder off `sys.path`, so `import taskiq` finds the library.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from typing import Any

from redis import asyncio as aioredis
from taskiq.api import run_receiver_task
from taskiq_redis import ListQueueBroker

SPEC: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
broker = ListQueueBroker(
    SPEC.get("url", "redis://"), queue_name=SPEC.get("prefix", "taskiq"), socket_timeout=None
)
STAMPS: Any = None  # the worker's client for pushing stamps


@broker.task(task_name="stamp")
async def stamp(dest: str) -> None:
    started = time.time()
    await STAMPS.rpush(dest, repr(started))


async def work() -> None:
    global STAMPS
    STAMPS = aioredis.from_url(SPEC["url"])
    await broker.startup()
    receiver = asyncio.create_task(run_receiver_task(broker))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    receiver.cancel()
    await broker.shutdown()


async def run(worker: subprocess.Popen[bytes]) -> dict[str, Any]:
    stamps_key = f"{SPEC['prefix']}:stamps"
    client = aioredis.from_url(SPEC["url"])
    await broker.startup()
    rng = random.Random(SPEC["seed"])
    samples: list[float] = []
    try:
        for i in range(SPEC["warmup"] + SPEC["jobs"]):
            measured = i >= SPEC["warmup"]
            if measured:
                await asyncio.sleep(SPEC["settle"] + rng.uniform(0, SPEC["jitter"]))
            before = time.time()
            await stamp.kiq(stamps_key)
            popped = await client.blpop([stamps_key], timeout=60 if i == 0 else 10)
            if popped is None:
                raise RuntimeError(f"task {i} did not start (worker exit code {worker.poll()})")
            if measured:
                samples.append((float(popped[1]) - before) * 1000)
    finally:
        await broker.shutdown()
        await client.aclose()
    versions = f"taskiq-redis {version('taskiq-redis')} (taskiq {version('taskiq')})"
    return {"version": f"{versions}, redis-py {version('redis')}", "samples_ms": samples}


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
    if sys.argv[1] == "worker":
        asyncio.run(work())
    else:
        worker = start_worker(SPEC)
        try:
            result = asyncio.run(run(worker))
        finally:
            stop_worker(worker)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
