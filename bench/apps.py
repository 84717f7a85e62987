"""Pipelines the benchmarks serve (instant retrieval and LLMs; timestamps where measured)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

from streaming_rag import StreamConfig, StreamingRAG


class StampBackend:
    """`retrieve` returns one doc holding `time.time()` at the moment the job's code starts."""

    async def retrieve(self, query: str) -> list[dict[str, float | str]]:
        return [{"content": "stamp", "t": time.time()}]


class InstantLLM:
    """Yields `tokens` tokens without waiting (parsed from the prompt's query: `tokens=N`)."""

    def __init__(self, tokens: int = 1, text: str = "token ") -> None:
        self.tokens = tokens
        self.text = text

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        n = self.tokens
        marker = prompt.rfind("tokens=")
        if marker >= 0:
            n = int(prompt[marker + 7 :].split()[0].strip(".:"))
        text = self.text
        for _ in range(n):
            yield text


def stamp_app() -> StreamingRAG:
    return StreamingRAG(StampBackend(), InstantLLM(1), StreamConfig())


class InstantBackend:
    """`retrieve` returns one small doc at once."""

    async def retrieve(self, query: str) -> list[dict[str, str]]:
        return [{"content": "instant"}]


def instant_app() -> StreamingRAG:
    """Instant retrieval and LLM: `tokens=N` in the query sets the answer's length (1)."""
    return StreamingRAG(InstantBackend(), InstantLLM(1), StreamConfig())


CHUNK_40B = "x" * 39 + " "


def chunk40_app() -> StreamingRAG:
    """Like `instant_app`, each token a 40-byte string (the memory benchmark's chunk)."""
    return StreamingRAG(InstantBackend(), InstantLLM(1, CHUNK_40B), StreamConfig())


class PacedLLM:
    """Waits `lead_s` (time for subscribers to attach), then yields `tokens` tokens
    `interval_s` apart; each token is the `time.time()` at which it was produced, so a
    subscriber can measure produce → receive lag."""

    def __init__(self, tokens: int = 100, interval_s: float = 0.02, lead_s: float = 1.0) -> None:
        self.tokens = tokens
        self.interval_s = interval_s
        self.lead_s = lead_s

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        import asyncio

        await asyncio.sleep(self.lead_s)
        for _ in range(self.tokens):
            await asyncio.sleep(self.interval_s)
            yield f"{time.time():.6f} "


def paced_app() -> StreamingRAG:
    return StreamingRAG(StampBackend(), PacedLLM(), StreamConfig())


class GatedLLM:
    """For the web benchmark: reads `gate=PATH`, `tokens=N` and `interval=S` from the prompt;
    waits until the file PATH exists (when given: the watchers attach first), then yields N
    tokens S seconds apart."""

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        import asyncio
        import os

        words = dict(w.split("=", 1) for w in prompt.split() if "=" in w)
        gate = words.get("gate")
        while gate and not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240 (another process's gate)
            await asyncio.sleep(0.005)
        interval = float(words.get("interval", "0").strip(".:"))
        for _ in range(int(words.get("tokens", "1").strip(".:"))):
            if interval:
                await asyncio.sleep(interval)
            yield "token "


def web_app() -> StreamingRAG:
    return StreamingRAG(InstantBackend(), GatedLLM(), StreamConfig())


class ClockLLM:
    """For the cluster benchmark: reads `gate=PATH`, `tokens=N` and `interval=S` from the
    prompt; waits until the file PATH exists (the subscribers attach first), then yields N
    tokens S seconds apart (0: no pacing), each the `time.time()` at which it was produced."""

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        import asyncio
        import os

        words = dict(w.split("=", 1) for w in prompt.split() if "=" in w)
        gate = words.get("gate")
        while gate and not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240 (another process's gate)
            await asyncio.sleep(0.005)
        interval = float(words.get("interval", "0").strip(".:"))
        for _ in range(int(words.get("tokens", "1").strip(".:"))):
            if interval:
                await asyncio.sleep(interval)
            yield f"{time.time():.6f} "


def clock_app() -> StreamingRAG:
    return StreamingRAG(InstantBackend(), ClockLLM(), StreamConfig())


class _Gates:
    """One poller task per gate file per worker process (not one per job): the file's content,
    written once and atomically by the benchmark, is the wall-clock time the answers start."""

    def __init__(self) -> None:
        self._opened: dict[str, asyncio.Future[float]] = {}
        self._pollers: set[asyncio.Task[None]] = set()

    async def start_time(self, path: str, timeout_s: float = 300.0) -> float:
        opened = self._opened.get(path)
        if opened is None:
            opened = self._opened[path] = asyncio.get_running_loop().create_future()
            poller = asyncio.create_task(self._poll(path, opened, timeout_s))
            self._pollers.add(poller)
            poller.add_done_callback(self._pollers.discard)
        return await asyncio.shield(opened)

    @staticmethod
    async def _poll(path: str, opened: asyncio.Future[float], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(path):  # noqa: ASYNC240 (another process's gate, every 10 ms)
            if time.monotonic() > deadline:
                opened.set_exception(TimeoutError(f"the gate {path} did not open"))
                return
            await asyncio.sleep(0.01)
        with open(path) as gate:  # noqa: ASYNC230 (a few bytes, once per process)
            opened.set_result(float(gate.read()))


_GATES = _Gates()


class ScheduledLLM:
    """For the capacity benchmark: reads `gate=PATH`, `phase=P`, `tokens=N` and `interval=S`
    from the prompt, waits until the file PATH exists (holding the start time T, written by the
    benchmark once every answer is running), then yields N tokens on the wall-clock schedule
    `T + P + k*S` (k = 0..N-1), each `"<scheduled>/<produced> "`: when the token was due and
    the `time.time()` at which the job yielded it. A job whose loop falls behind yields its
    overdue tokens at once (as a real LLM's buffered network stream would), so
    `produced - scheduled` is the worker's own delay."""

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        words = dict(w.split("=", 1) for w in prompt.split() if "=" in w)
        start = await _GATES.start_time(words["gate"]) + float(words.get("phase", "0"))
        interval = float(words.get("interval", "0.02").strip(".:"))
        for k in range(int(words.get("tokens", "1").strip(".:"))):
            due = start + k * interval
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield f"{due:.6f}/{time.time():.6f} "


def capacity_app() -> StreamingRAG:
    return StreamingRAG(InstantBackend(), ScheduledLLM(), StreamConfig())
