"""Our side of `python -m bench resumable`: one warm worker process (`bench._worker fast`,
`bench.apps:clock_app`) and subscribers on one async `StreamingRAGClient` in this process.

Each answer waits on a gate file until every subscriber has the job's first event (0
subscribers: until the job runs); the worker's CPU (/proc schedstat) is counted from the gate
opening to the answer's end. The kill scenario starts a worker of its own and SIGKILLs it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from streaming_rag import EventType
from streaming_rag_client import JobStatus, StreamingRAGClient

from ._common import cpu_seconds, percentiles
from ._common import worker_process as worker

APP = "bench.apps:clock_app"
TIMEOUT_S = 30.0
POLL_S = 0.002


async def _until(rag: StreamingRAGClient, job_id: str, wanted: set[str], timeout_s: float) -> str:
    """Polls the job's status until it is one of `wanted` (bounded); returns it."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(await rag.astatus(job_id))
        if status in wanted:
            return status
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {status!r} after {timeout_s:.0f} s")
        await asyncio.sleep(POLL_S)


class Ours:
    """streaming-rag: the worker's pid, the server and the key prefix it serves."""

    label = "ours"

    def __init__(self, url: str, prefix: str, pid: int) -> None:
        self.url, self.prefix, self.pid = url, prefix, pid

    async def run_level(self, tokens: int, interval_ms: float, readers: int) -> dict[str, Any]:
        """One answer of `tokens` tokens (`interval_ms` apart) to `readers` subscribers that
        attached before the first token: worker CPU per token, lag at the subscribers."""
        rag = StreamingRAGClient(self.url, prefix=self.prefix)
        lags: list[float] = []
        counts = [0] * readers
        attached = asyncio.Event()
        waiting = [readers]
        budget_s = TIMEOUT_S + tokens * interval_ms / 1000 * 2
        with tempfile.TemporaryDirectory(prefix="bench-resumable-") as tmp:
            gate = Path(tmp) / "gate"
            query = f"resumable gate={gate} tokens={tokens} interval={interval_ms / 1000:.6f}"

            async def follow(index: int, job_id: str) -> None:
                first = True
                async for event in rag.aevents(job_id):
                    now = time.time()
                    if first:
                        first = False
                        waiting[0] -= 1
                        if not waiting[0]:
                            attached.set()
                    if event.type is EventType.CHUNK:
                        lags.append((now - float(event.data)) * 1000)
                        counts[index] += 1

            try:
                job_id = await rag.asubmit(query)
                tasks = [asyncio.create_task(follow(i, job_id)) for i in range(readers)]
                if readers:
                    await asyncio.wait_for(attached.wait(), TIMEOUT_S)
                else:
                    await _until(rag, job_id, {JobStatus.RUNNING.value}, TIMEOUT_S)
                before = cpu_seconds(self.pid)
                await asyncio.to_thread(gate.touch)
                if readers:
                    await asyncio.wait_for(asyncio.gather(*tasks), budget_s)
                else:
                    await _until(rag, job_id, {JobStatus.DONE.value}, budget_s)
                cpu = cpu_seconds(self.pid) - before
            finally:
                await rag.aclose()
        result: dict[str, Any] = {"cpu_us_per_token": cpu / tokens * 1e6, "readers": readers}
        if readers:
            result["lag_ms"] = percentiles(lags)
            result["complete"] = all(n == tokens for n in counts)
        return result

    async def late_join(self, tokens: int) -> dict[str, Any]:
        """An answer of `tokens` fast tokens finishes; then one subscriber joins."""
        rag = StreamingRAGClient(self.url, prefix=self.prefix)
        try:
            job_id = await rag.asubmit(f"resumable tokens={tokens} interval=0")
            await _until(rag, job_id, {JobStatus.DONE.value}, TIMEOUT_S)
            started = time.perf_counter()
            got = 0
            last = ""
            async for event in rag.aevents(job_id):
                got += event.type is EventType.CHUNK
                last = event.type.value
            elapsed_ms = (time.perf_counter() - started) * 1000
        finally:
            await rag.aclose()
        return {"got": f"replay to {last}", "tokens": got, "whole_answer": got == tokens,
                "ms": elapsed_ms}  # fmt: skip

    async def killed(
        self, tokens: int, interval_ms: float, wait_s: float, prefix: str
    ) -> dict[str, Any]:
        """A worker of its own (under `prefix`) is SIGKILLed once the one subscriber has half
        the tokens; what that subscriber sees within `wait_s` seconds after the kill."""
        half = tokens // 2
        with worker(self.url, prefix, APP) as proc:
            rag = StreamingRAGClient(self.url, prefix=prefix)
            got = 0
            killed_at = [0.0]
            last: list[Any] = [None]

            async def follow(job_id: str) -> None:
                nonlocal got
                async for event in rag.aevents(job_id):
                    last[0] = event
                    if event.type is EventType.CHUNK:
                        got += 1
                        if got == half:
                            os.kill(proc.pid, signal.SIGKILL)
                            killed_at[0] = time.monotonic()

            query = f"resumable tokens={tokens} interval={interval_ms / 1000:.6f}"
            try:
                job_id = await rag.asubmit(query)
                budget_s = tokens * interval_ms / 1000 + wait_s
                ended = True
                try:
                    await asyncio.wait_for(follow(job_id), budget_s)
                except TimeoutError:
                    ended = False
                after_s = time.monotonic() - killed_at[0] if killed_at[0] else 0.0
            finally:
                await rag.aclose()
        event = last[0]
        end = "nothing" if event is None else event.type.value
        if event is not None and event.type is EventType.ERROR:
            end = f"error: {event.data.get('msg') if isinstance(event.data, dict) else event.data}"
        return {
            "tokens": got,
            "of": tokens,
            "end": end if ended else f"no end (waited {after_s:.0f} s)",
            "ended": ended,
            "s_after_kill": after_s,
        }
