"""`streaming-rag demo`: an embedded Valkey (unless a server is given), an in-process worker over
the bundled corpus, two subscribers of one live stream, then a replay."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import uuid
from typing import Any

from streaming_rag import EventType, StreamEvent

from ._printing import EventPrinter
from ._settings import events_url, setup_logging

__all__ = ["cmd_demo"]

logger = logging.getLogger("streaming_rag.cli")


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    from streaming_rag_worker.demo_app import SAMPLE_QUESTION

    from .embedded import EmbeddedValkey

    url = None if args.embedded else (args.redis_url or os.environ.get("REDIS_URL"))
    events = None if url is None else events_url(args)
    server = None
    if url is None:
        server = EmbeddedValkey().start()
        url = server.url
        print(f"[embedded Valkey started at {url}]", flush=True)
    try:
        question = args.question or SAMPLE_QUESTION
        return asyncio.run(_demo(url, events or url, question, args.replay_speed, args.prefix))
    finally:
        if server is not None:
            server.stop()
            print("[embedded Valkey stopped]", flush=True)


async def _demo(
    url: str, events: str, question: str, replay_speed: float, given_prefix: str | None
) -> int:
    """The demo on `url`, its per-job keys on `events` (the same URL unless
    ``--events-url`` / `$STREAMING_RAG_EVENTS_URL` names another server). Under
    `given_prefix` (``--prefix``) the job's keys stay for their retention period, like any
    job's; under the default random prefix, every key the demo made on the queue server is
    deleted at the end (on a separate events server they expire with the retention TTL)."""
    from streaming_rag_client import StreamingRAGClient
    from streaming_rag_worker import WorkerConfig, build_worker
    from streaming_rag_worker.demo_app import demo_app

    out = sys.stdout
    # a random prefix never collides with a real deployment's
    prefix = given_prefix or f"srag-demo-{uuid.uuid4().hex[:8]}"
    config = WorkerConfig(
        redis_url=url, events_url=events, prefix=prefix, concurrency=4, shutdown_grace_s=0.0
    )
    worker = build_worker(config, rag=demo_app(), handle_signals=False, poll_delay=0.05)
    worker_task = asyncio.create_task(worker.async_run(), name="streaming-rag-demo-worker")
    print(f"[worker running in this process, prefix {prefix!r}]", flush=True)
    # a server that dies under the demo ends it in a few seconds, with one line
    opts: dict[str, Any] = {
        "start_timeout": 10.0,
        "poll_interval_s": 0.25,
        "reconnect_s": 3.0,
        "events_url": events,
    }
    a = StreamingRAGClient(url, prefix=prefix, **opts)
    b = StreamingRAGClient(url, prefix=prefix, **opts)
    try:
        job_id = await a.asubmit(question)
        print(f"\nQuestion: {question}", flush=True)
        print("Subscribers A and B follow the live stream; A prints it as it arrives:\n")
        printer = EventPrinter(job_id, out=out, err=out)

        async def subscriber_a() -> list[StreamEvent]:
            seen = []
            async for event in a.aevents(job_id):
                printer.show(event)
                seen.append(event)
            return seen

        async def subscriber_b() -> list[StreamEvent]:
            return [event async for event in b.aevents(job_id)]

        seen_a, seen_b = await asyncio.gather(subscriber_a(), subscriber_b())
        chunks = sum(e.type is EventType.CHUNK for e in seen_a)
        verdict = "identical" if seen_a == seen_b else "DIFFERENT"
        print(
            f"\nSubscribers A and B received {verdict} event lists: {len(seen_a)} and "
            f"{len(seen_b)} events ({chunks} chunks).",
            flush=True,
        )
        speed = "instantly" if replay_speed == 0 else f"at {replay_speed:g}x speed"
        print(f"\nReplay of job {job_id} {speed}:\n", flush=True)
        replayer = EventPrinter(job_id, out=out, err=out)
        async for event in a.areplay(job_id, speed=replay_speed):
            replayer.show(event)
        same = replayer.answer == printer.answer
        print(f"\n[replayed answer is {'the same' if same else 'DIFFERENT'}]", flush=True)
        ok = seen_a == seen_b and same and printer.exit_code == 0
        return 0 if ok else 1
    finally:
        await a.aclose()
        await b.aclose()
        await worker.stop(0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await worker_task
        if given_prefix is None:
            await _delete_keys(url, prefix)


async def _delete_keys(url: str, prefix: str) -> None:
    """Remove the demo's keys (its prefix is random, so nobody else uses them)."""
    import redis.asyncio

    r = redis.asyncio.Redis.from_url(url)
    try:
        for pattern in (f"{prefix}:*", f"arq:*:{prefix}:*"):
            keys = [key async for key in r.scan_iter(match=pattern, count=500)]
            if keys:
                await r.delete(*keys)
    except Exception:  # best effort: the keys expire anyway
        logger.debug("could not delete the demo's keys", exc_info=True)
    finally:
        await r.aclose()
