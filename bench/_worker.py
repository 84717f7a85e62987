"""`python -m bench._worker fast|stock SPEC_JSON`: a worker process for the benchmarks.

"fast" is `StreamingWorker` (woken by submits); "stock" is arq's own `Worker` class with
the same settings and job function, polling every 0.5 s as arq does by default. Both set
`{prefix}:bench-ready` once started. With `BENCH_WORKER_PROFILE=PATH` in the environment the
worker samples its own stacks (`bench._sampling.StackSampler`) from SIGUSR1 to SIGUSR2 and
then writes the counts to PATH (JSON).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from arq.worker import Worker

from streaming_rag_worker import WorkerConfig
from streaming_rag_worker.runner import StreamingWorker, WorkerRuntime


def main() -> None:
    kind, spec = sys.argv[1], json.loads(sys.argv[2])
    config = WorkerConfig(**spec)
    runtime = WorkerRuntime(config)  # one runtime: its startup builds what its jobs run with
    kwargs = runtime.settings()
    startup = kwargs["on_startup"]

    async def on_startup(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        await ctx["redis"].set(f"{config.prefix}:bench-ready", "1", ex=600)

    if kind == "stock":
        Worker(**{**kwargs, "on_startup": on_startup}).run()
    else:
        StreamingWorker(runtime, **{**kwargs, "on_startup": on_startup}).run()


def profiled(path: str) -> None:
    """`main()` with a stack sampler that SIGUSR1 starts and SIGUSR2 stops (writing `path`)."""
    from bench._sampling import StackSampler

    sampler = StackSampler()

    def stop(signum: int, frame: object) -> None:
        sampler.stop()
        sampler.dump(path)

    signal.signal(signal.SIGUSR1, lambda signum, frame: sampler.start())
    signal.signal(signal.SIGUSR2, stop)
    main()


if __name__ == "__main__":
    if os.environ.get("BENCH_WORKER_PROFILE"):
        profiled(os.environ["BENCH_WORKER_PROFILE"])
    else:
        main()
