"""`python -m bench outage`: what a Redis restart does to a running answer, measured.

Each run: a fresh embedded Valkey (appendonly), a worker and three subscribers (two sharing the
async fan-out, one with its own reads) in this process, one answer of 400 tokens paced 5 ms
apart. At token 100 the server is stopped (`restart`: SIGTERM; `crash`: SIGKILL, so writes of
the last second may be lost and the worker must repair the stream) and started again on the
same port `--down-ms` later. Measured per run:

- worker back: server up again -> the next entry the worker appends;
- subscribers back: server up again -> the last of the three subscribers has that entry;
- lost / duplicated: the subscribers' events against a replay afterwards, entry id by entry id
  (the target is zero of both: that is a PASS/MISS, the times are reported as measured).

Runs alternate the two kinds; medians with min-max spreads over `--runs` runs of each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from streaming_rag import EventType, StreamConfig, StreamingRAG
from streaming_rag_cli.embedded import EmbeddedValkey
from streaming_rag_client import StreamingRAGClient
from streaming_rag_worker import WorkerConfig, build_worker

from ._tools import emit_json, verdict

TOKENS = 400
CUT_AT = 100


class Retriever:
    async def retrieve(self, query: str) -> list[str]:
        return ["a document"]


class PacedLLM:
    def __init__(self) -> None:
        self.reached = asyncio.Event()

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for i in range(TOKENS):
            if i == CUT_AT:
                self.reached.set()
            yield f"t{i} "
            await asyncio.sleep(0.005)  # a model's pace


async def _follow(client: StreamingRAGClient, job_id: str, times: list[float]) -> list[Any]:
    out = []
    async for event in client.aevents(job_id):
        out.append(event)
        times.append(time.monotonic())
    return out


async def one_run(kind: str, down_ms: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedValkey(appendonly=True, data_dir=Path(tmp) / "v").start()
        try:
            return await _measure(server, kind, down_ms)
        finally:
            server.stop()


async def _measure(server: EmbeddedValkey, kind: str, down_ms: int) -> dict[str, Any]:
    prefix = "bench-outage"
    llm = PacedLLM()
    rag = StreamingRAG(Retriever(), llm, StreamConfig(generation_timeout=120))
    config = WorkerConfig(redis_url=server.url, prefix=prefix, lease_s=20.0)
    worker = build_worker(config, rag=rag, handle_signals=False, poll_delay=0.05)
    worker_task = asyncio.create_task(worker.async_run())
    shared = StreamingRAGClient(server.url, prefix=prefix, start_timeout=30)
    alone = StreamingRAGClient(server.url, prefix=prefix, start_timeout=30, fanout=False)
    times: list[list[float]] = [[], [], []]
    try:
        job_id = await shared.asubmit("q")
        subs = [
            asyncio.create_task(_follow(shared, job_id, times[0])),
            asyncio.create_task(_follow(shared, job_id, times[1])),
            asyncio.create_task(_follow(alone, job_id, times[2])),
        ]
        await asyncio.wait_for(llm.reached.wait(), 30)
        await asyncio.to_thread(server.kill if kind == "crash" else server.shutdown)
        await asyncio.sleep(down_ms / 1000)  # the outage itself
        await asyncio.to_thread(server.start)
        back = time.monotonic()
        lives = await asyncio.wait_for(asyncio.gather(*subs), 60)
        done = time.monotonic()
        replay = [e async for e in shared.aevents(job_id)]
    finally:
        await shared.aclose()
        await alone.aclose()
        await worker.stop(0)
        worker_task.cancel()
    # the first event each subscriber got after the server was back
    resumed = [min((t for t in ts if t >= back), default=float("nan")) for ts in times]
    ref = [(e.id, e.type, e.data) for e in replay]
    lost = max(len({e.id for e in replay} - {e.id for e in live}) for live in lives)
    dup = max(len(live) - len({e.id for e in live}) for live in lives)
    chunks = [e.data for e in replay if e.type is EventType.CHUNK]
    complete = chunks == [f"t{i} " for i in range(TOKENS)]
    return {
        "kind": kind,
        "subscribers_back_ms": round((max(resumed) - back) * 1000, 1),
        "done_after_ms": round((done - back) * 1000, 1),
        "lost": lost,
        "duplicated": dup,
        "complete": complete and replay[-1].type is EventType.GENERATION_DONE,
        "equal_to_replay": all([(e.id, e.type, e.data) for e in live] == ref for live in lives),
    }


def summarize(rows: list[dict[str, Any]], kind: str, key: str) -> str:
    values = [r[key] for r in rows if r["kind"] == kind]
    return f"{statistics.median(values):.0f} [{min(values):.0f}-{max(values):.0f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench outage", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (default 5)")
    parser.add_argument("--down-ms", type=int, default=500, help="outage length (default 500)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("streaming_rag").setLevel(logging.ERROR)  # the outages are on purpose
    rows: list[dict[str, Any]] = []
    for _ in range(args.runs):
        for kind in ("restart", "crash"):
            rows.append(asyncio.run(one_run(kind, args.down_ms)))
    ok = all(
        r["lost"] == 0 and r["duplicated"] == 0 and r["complete"] and r["equal_to_replay"]
        for r in rows
    )
    if args.json:
        emit_json({"benchmark": "outage", "rows": rows, "pass": ok})
        return 0 if ok else 1
    print(f"outage: server down {args.down_ms} ms at token {CUT_AT} of {TOKENS}, 3 subscribers")
    print(f"{'kind':<9}{'subscribers back ms':>22}{'answer done ms':>18}{'lost':>6}{'dup':>5}")
    for kind in ("restart", "crash"):
        mine = [r for r in rows if r["kind"] == kind]
        print(
            f"{kind:<9}{summarize(rows, kind, 'subscribers_back_ms'):>22}"
            f"{summarize(rows, kind, 'done_after_ms'):>18}"
            f"{sum(r['lost'] for r in mine):>6}{sum(r['duplicated'] for r in mine):>5}"
        )
    print(
        f"medians [min-max] over {args.runs} runs of each kind, alternating; times from the "
        f"server's restart; every subscriber equal to the replay, nothing lost or "
        f"duplicated (target): {verdict(ok)}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
