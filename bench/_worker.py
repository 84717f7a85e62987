"""`python -m bench._worker fast|stock SPEC_JSON`: a worker process for the benchmarks.

"fast" is `StreamingWorker` (woken by submits); "stock" is arq's own `Worker` class with
the same settings and job function, polling every 0.5 s as arq does by default. Both set
`{prefix}:bench-ready` once started.
"""

from __future__ import annotations

import json
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


if __name__ == "__main__":
    main()
