"""One measured run of the capacity benchmark: N answers at once through one worker process.

Every answer is a `bench.apps:capacity_app` job whose tokens are due on a wall-clock schedule
(`at + phase + k * interval`, the phases spread evenly over one interval so the N answers do
not tick together); each token carries when it was due and when the job yielded it. All N
subscribers (one per answer) live in this process and share the async client's one fan-out
reader. CPU is sampled (worker, server, this client process) by a thread at the two ends of
the steady window, which opens `skip_s` after the answers' first tokens are due and closes
just before the earliest answer's last token: every answer runs through all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streaming_rag import EventType
from streaming_rag_client import StreamingRAGClient

from ._common import cpu_seconds, percentiles, server_cpu_seconds

#: the pipeline every answer runs (`bench.apps.ScheduledLLM`)
APP = "bench.apps:capacity_app"
#: submits in flight at once (each holds one pooled connection)
SUBMIT_CONCURRENCY = 64


@dataclass(frozen=True)
class Plan:
    """One run's shape: `answers` concurrent answers of `tokens` tokens `interval_s` apart,
    submitted all at once (`ramp_s` 0) or evenly over `ramp_s` seconds; once every answer is
    running (or `ready_timeout_s` passed) their first tokens are due `lead_s` later; the
    window skips the first `skip_s`."""

    answers: int
    tokens: int = 150
    interval_s: float = 0.02
    skip_s: float = 1.0
    lead_s: float = 0.5
    ramp_s: float = 0.0
    ready_timeout_s: float = 60.0

    def window(self, at: float) -> tuple[float, float]:
        """The steady window for answers whose tokens are first due at `at` (+ phase)."""
        start = at + self.interval_s + self.skip_s
        end = at + (self.tokens - 1) * self.interval_s - 0.15
        if end - start < 0.2:
            raise ValueError(
                f"{self.tokens} tokens {self.interval_s * 1000:g} ms apart leave no steady "
                f"window after skipping {self.skip_s} s"
            )
        return start, end

    def query(self, gate: str, index: int) -> str:
        phase = index * self.interval_s / self.answers
        return (
            f"capacity gate={gate} phase={phase:.6f} tokens={self.tokens} "
            f"interval={self.interval_s} end"
        )


def lease_config(lease_s: float | None) -> dict[str, float]:
    """The worker's lease settings for `lease_s` (heartbeat a third of it); None: defaults."""
    if lease_s is None:
        return {}
    return {"lease_s": lease_s, "heartbeat_s": lease_s / 3}


Sample = tuple[float, float, float, float]  # wall time, worker, server, client CPU seconds


def run_queue_seconds(pid: int) -> float:
    """Seconds a process's threads have waited, runnable, for a CPU (`/proc/<pid>/task/*/
    schedstat`, second field): on a shared machine, the time others' work took from it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


class Sampler(threading.Thread):
    """Samples CPU seconds at two wall-clock times (in a thread: the event loop may be busy)."""

    def __init__(self, url: str, worker_pid: int, times: tuple[float, float]) -> None:
        super().__init__(daemon=True)
        self.url, self.worker_pid, self.times = url, worker_pid, times
        self.samples: list[Sample] = []
        self.waits: list[tuple[float, float]] = []  # worker, client run-queue seconds
        self.stop = threading.Event()

    def read(self) -> tuple[Sample, tuple[float, float]]:
        """CPU seconds now, stamped with the middle of the reads (the INFO call takes a round
        trip), and the worker's and this process's run-queue seconds."""
        before = time.time()
        worker, client = cpu_seconds(self.worker_pid), cpu_seconds(os.getpid())
        waits = run_queue_seconds(self.worker_pid), run_queue_seconds(os.getpid())
        server = server_cpu_seconds(self.url)
        return ((before + time.time()) / 2, worker, server, client), waits

    def run(self) -> None:
        for due in self.times:
            if self.stop.wait(max(0.0, due - time.time())):
                return
            sample, waits = self.read()
            self.samples.append(sample)
            self.waits.append(waits)


def parse_tokens(received: list[tuple[float, str]]) -> list[tuple[float, float, float]]:
    """`(due, produced, received)` per token from `(received, "<due>/<produced> ")` pairs."""
    out = []
    for got, data in received:
        due, produced = data.split("/")
        out.append((float(due), float(produced), got))
    return out


def summarise(
    plan: Plan,
    answers: list[list[tuple[float, float, float]]],
    samples: list[Sample],
    failures: list[str],
    submit_s: float,
) -> dict[str, Any]:
    """The run's figures from every answer's tokens and the two CPU samples; `failures` names
    each answer that ended in an ERROR event (its stage) or raised (the exception's type).

    The worker's CPU is per token produced in the window; the server's and the client's per
    token received in it (a worker that falls behind writes less than it produces: `keeps_up`
    is received / produced, below 1 when a backlog grows). Lags are over the tokens produced
    in the window."""
    (t0, w0, s0, c0), (t1, w1, s1, c1) = samples
    made = [tok for answer in answers for tok in answer if t0 <= tok[1] <= t1]
    got = sum(1 for answer in answers for tok in answer if t0 <= tok[2] <= t1)
    produced, received = max(1, len(made)), max(1, got)
    wall = t1 - t0
    running = sum(1 for a in answers if len(a) == plan.tokens and a[0][1] <= t0)
    return {
        "answers": plan.answers,
        "tokens_per_answer": plan.tokens,
        "window_s": wall,
        "produced_in_window": len(made),
        "received_in_window": got,
        "keeps_up": got / produced,
        "worker_us_per_token": (w1 - w0) / produced * 1e6,
        "server_us_per_token": (s1 - s0) / received * 1e6,
        "client_us_per_token": (c1 - c0) / received * 1e6,
        "worker_cpu_pct": (w1 - w0) / wall * 100,
        "server_cpu_pct": (s1 - s0) / wall * 100,
        "client_cpu_pct": (c1 - c0) / wall * 100,
        "lag_ms": percentiles([(r - p) * 1000 for _, p, r in made] or [0.0]),
        "due_lag_ms": percentiles([(r - d) * 1000 for d, _, r in made] or [0.0]),
        "worker_late_ms": percentiles([(p - d) * 1000 for d, p, _ in made] or [0.0]),
        "delivered": sum(len(a) for a in answers),
        "expected": plan.answers * plan.tokens,
        "running_in_window": running,
        "failed": len(failures),
        "failures": sorted(set(failures)),
        "submit_s": submit_s,
    }


def open_gate(path: str, at: float) -> None:
    """Write the start time to the gate file, atomically: the workers read it whole or not
    at all (`bench.apps.ScheduledLLM`)."""
    Path(path + ".tmp").write_text(f"{at:.6f}")
    os.replace(path + ".tmp", path)


async def measure(
    url: str, prefix: str, worker_pid: int, plan: Plan, *, profile: bool = False
) -> dict[str, Any]:
    """Submit `plan.answers` answers, follow each with one subscriber, open the gate once all
    are running (their GENERATION_START seen, or `plan.ready_timeout_s` passed), and measure
    the steady window (`profile`: the worker samples its stacks from the gate's opening to the
    last answer's end, SIGUSR1 / SIGUSR2).
    Bounded: the answers must end within the ready timeout + their length + 60 s."""
    plan.window(0.0)  # refuse a plan without a steady window before starting anything
    rag = StreamingRAGClient(url, prefix=prefix)
    started = time.time()
    submits = asyncio.Semaphore(SUBMIT_CONCURRENCY)
    submitted: list[float] = []
    errors: list[str] = []
    settled, all_ready = [0], asyncio.Event()

    def settle() -> None:
        settled[0] += 1
        if settled[0] == plan.answers:
            all_ready.set()

    async def answer(index: int, gate: str) -> list[tuple[float, str]]:
        if plan.ramp_s:
            await asyncio.sleep(index * plan.ramp_s / plan.answers)
        try:
            async with submits:
                job_id = await rag.asubmit(plan.query(gate, index))
        except BaseException:
            settle()
            raise
        submitted.append(time.time())
        got: list[tuple[float, str]] = []
        waiting = True
        async for event in rag.aevents(job_id):
            if event.is_chunk:
                got.append((time.time(), event.data))
            elif event.type is EventType.GENERATION_START or event.is_terminal:
                if waiting:
                    waiting = False
                    settle()
                if event.type is EventType.ERROR:
                    error = f"{event.data.get('stage', '?')}: {event.data.get('msg', '')}"
                    errors.append(error[:80])
        if waiting:
            settle()
        return got

    with tempfile.TemporaryDirectory() as tmp:
        gate = str(Path(tmp) / "gate")
        tasks = [asyncio.create_task(answer(i, gate)) for i in range(plan.answers)]
        sampler: Sampler | None = None
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_ready.wait(), plan.ramp_s + plan.ready_timeout_s)
            ready, ready_s = settled[0], time.time() - started
            at = time.time() + plan.lead_s
            sampler = Sampler(url, worker_pid, plan.window(at))
            if profile:  # the worker's stack sampler (`bench._worker`) runs until the end
                os.kill(worker_pid, signal.SIGUSR1)
            first, _ = sampler.read()
            open_gate(gate, at)
            sampler.start()
            budget = plan.lead_s + plan.tokens * plan.interval_s + 60
            _, pending = await asyncio.wait(tasks, timeout=budget)
            if pending:
                raise TimeoutError(f"{len(pending)} answers still running after {budget:.0f} s")
            last, _ = sampler.read()
            if profile:
                os.kill(worker_pid, signal.SIGUSR2)
            # answers that all ended early (failed) leave the window to the sampler
            await asyncio.to_thread(sampler.join, max(0.0, sampler.times[1] - time.time()) + 10)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if sampler is not None:
                sampler.stop.set()
                sampler.join(10)
            await rag.aclose()
    if sampler is None or len(sampler.samples) < 2:
        raise RuntimeError("the CPU sampler missed the steady window")
    results = [t.exception() or t.result() for t in tasks]
    answers = [parse_tokens(r) for r in results if not isinstance(r, BaseException)]
    failures = [type(r).__name__ for r in results if isinstance(r, BaseException)]
    submit_s = (max(submitted) - started) if submitted else float("nan")
    run = summarise(plan, answers, sampler.samples, errors + failures, submit_s)
    (w0, c0), (w1, c1) = sampler.waits
    wall = run["window_s"] / 100
    delivered = max(1, run["delivered"])
    return {
        **run,
        **{
            f"{name}_us_per_token_all": (last[i] - first[i]) / delivered * 1e6
            for i, name in ((1, "worker"), (2, "server"), (3, "client"))
        },
        "ready_before_start": ready,
        "ready_s": ready_s,
        "worker_wait_pct": (w1 - w0) / wall,
        "client_wait_pct": (c1 - c0) / wall,
    }
