"""Per-chunk cost of the streaming surfaces over iterating the bare token stream directly.

For each generation strategy, an answer of `--tokens` tokens from a source that yields
instantly is consumed once bare and once through each surface; each figure is the median of
`--repeat` runs. overhead = surface µs/chunk - bare µs/chunk; ratio = surface / bare.
Bare is `async for` over `llm.astream()` (strategy 1), `for` over `llm.stream()` (strategy 2)
and `for` over the words of `rag_system.generate()`'s answer (strategy 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from streaming_rag import StreamConfig, StreamingRAG

SURFACES = ("astream_events", "stream_events", "stream")
#: (strategy, surface) -> max overhead in µs per chunk.
TARGETS: dict[tuple[int, str], float] = {
    (1, "astream_events"): 3.0,
    (1, "stream_events"): 10.0,
    (2, "astream_events"): 12.0,
}
QUERY = "What is the capital of France?"


class AsyncLLM:
    """Strategy 1: `astream` yields every token at once (no awaits)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for _ in range(self.tokens):
            yield "tok "


class SyncLLM:
    """Strategy 2: `stream` yields every token at once."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def stream(self, prompt: str) -> Iterator[str]:
        for _ in range(self.tokens):
            yield "tok "


class Rag:
    """One short document; `generate` returns a `tokens`-word answer (strategy 3)."""

    def __init__(self, tokens: int) -> None:
        self.answer = "word " * tokens

    def retrieve(self, query: str) -> list[dict[str, Any]]:
        return [{"content": "Paris is the capital of France.", "source": "geo.txt"}]

    def generate(self, query: str, context: dict[str, Any]) -> str:
        return self.answer


def _timed(consume: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    count = consume()
    return time.perf_counter() - start, count


def _timed_async(consume: Callable[[], AsyncIterator[Any]]) -> tuple[float, int]:
    """Time an async iteration inside a running loop (loop set-up excluded)."""

    async def run() -> tuple[float, int]:
        count = 0
        start = time.perf_counter()
        async for _ in consume():
            count += 1
        return time.perf_counter() - start, count

    return asyncio.run(run())


def _measure(strategy: int, surface: str, tokens: int) -> tuple[float, int]:
    """Seconds and chunks for one full answer; surface "bare" iterates the source itself."""
    rag_system = Rag(tokens)
    llm: AsyncLLM | SyncLLM | None = None
    if strategy == 1:
        llm = AsyncLLM(tokens)
    elif strategy == 2:
        llm = SyncLLM(tokens)
    if surface == "bare":
        if isinstance(llm, AsyncLLM):
            return _timed_async(lambda: llm.astream(QUERY))
        if isinstance(llm, SyncLLM):
            return _timed(lambda: sum(1 for _ in llm.stream(QUERY)))
        return _timed(lambda: sum(1 for _ in rag_system.generate(QUERY, {}).split()))
    config = StreamConfig(chunk_size=1, sim_delay=0.0, generation_timeout=3600.0)
    rag = StreamingRAG(rag_system, llm, config)
    if surface == "astream_events":
        elapsed, _ = _timed_async(lambda: rag.astream_events(QUERY))
    elif surface == "stream_events":
        elapsed, _ = _timed(lambda: sum(1 for _ in rag.stream_events(QUERY)))
    else:
        elapsed, _ = _timed(lambda: sum(1 for _ in rag.stream(QUERY)))
    return elapsed, rag.stats["total_chunks"]


def run(tokens: int, repeat: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for strategy in (1, 2, 3):
        per_chunk: dict[str, list[float]] = {s: [] for s in ("bare", *SURFACES)}
        for _ in range(repeat):
            for surface in per_chunk:
                elapsed, chunks = _measure(strategy, surface, tokens)
                if chunks != tokens:
                    raise RuntimeError(f"strategy {strategy} {surface}: {chunks} chunks")
                per_chunk[surface].append(elapsed / chunks * 1e6)
        bare = statistics.median(per_chunk["bare"])
        for surface in SURFACES:
            value = statistics.median(per_chunk[surface])
            target = TARGETS.get((strategy, surface))
            overhead = value - bare
            rows.append(
                {
                    "strategy": strategy,
                    "surface": surface,
                    "bare_us": round(bare, 3),
                    "surface_us": round(value, 3),
                    "overhead_us": round(overhead, 3),
                    "ratio": round(value / bare, 1),
                    "target_us": target,
                    "verdict": None if target is None else "PASS" if overhead <= target else "MISS",
                }
            )
    return rows


def _table(rows: list[dict[str, Any]], tokens: int, repeat: int) -> str:
    names = {1: "1 async LLM", 2: "2 sync LLM", 3: "3 generate()"}
    head = (
        f"{'strategy':<13}{'surface':<16}{'bare':>8}{'surface':>10}{'overhead':>10}"
        f"{'ratio':>8}  {'target':<8}verdict"
    )
    lines = [
        f"streaming_rag overhead: {tokens} tokens per answer, median of {repeat} runs, "
        f"µs per chunk (Python {platform.python_version()})",
        head,
        "-" * len(head),
    ]
    for r in rows:
        target = f"<= {r['target_us']:g}" if r["target_us"] is not None else "-"
        lines.append(
            f"{names[r['strategy']]:<13}{r['surface']:<16}{r['bare_us']:>8.3f}"
            f"{r['surface_us']:>10.3f}{r['overhead_us']:>10.3f}{r['ratio']:>7.1f}x  "
            f"{target:<8}{r['verdict'] or ''}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench overhead",
        description="Per-chunk overhead of astream_events, stream_events and stream over the "
        "bare token stream, for generation strategies 1 (async LLM), 2 (sync LLM) and "
        "3 (rag_system.generate, chunk_size=1, sim_delay=0).",
    )
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per answer")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any target is missed")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.repeat < 1:
        parser.error("--tokens and --repeat must be >= 1")
    rows = run(args.tokens, args.repeat)
    if args.json:
        meta = {"tokens": args.tokens, "repeat": args.repeat, "unit": "us_per_chunk"}
        print(json.dumps({**meta, "python": platform.python_version(), "results": rows}))
    else:
        print(_table(rows, args.tokens, args.repeat))
    missed = any(r["verdict"] == "MISS" for r in rows)
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
