"""The bridge's SSE sink over the fan-out's pages: every watcher of a job gets the same bytes;
watchers at the same place share one page and one encoding of it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from streaming_rag import StreamEvent
from streaming_rag_client import StreamingRAGClient
from streaming_rag_client._fanout_pages import NUDGED, Nudge, follow_pages
from streaming_rag_client._sse import format_page
from tests.helpers_queue import running_worker
from tests.helpers_web import WAIT_S, web_stack
from tests.queue_apps import make_rag
from tests.test_fanout_log import SteppedLLM


async def test_many_sse_watchers_of_one_job_receive_the_same_bytes(redis_url, key_prefix):
    llm = SteppedLLM()
    async with web_stack(redis_url, key_prefix, llm, pipeline=make_rag(llm)) as stack:
        response = await stack.http.post("/answers", json={"query": "shared bytes"})
        events_url = stack.url(response.json()["events_url"])
        attached = asyncio.Semaphore(0)

        async def watcher() -> bytes:
            body = b""
            async with stack.http.stream("GET", events_url) as stream:
                async for chunk in stream.aiter_bytes():
                    if not body:
                        attached.release()
                    body += chunk
            return body

        watchers = [asyncio.create_task(watcher()) for _ in range(20)]
        for _ in watchers:
            await asyncio.wait_for(attached.acquire(), WAIT_S)
        for _ in range(5):
            llm.release(3)
        llm.finish()
        bodies = await asyncio.wait_for(asyncio.gather(*watchers), WAIT_S)
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0].count(b"event: chunk\n") == 15
    assert bodies[0].rstrip().endswith(b"}")  # ends after the terminal message


async def test_followers_at_the_same_place_share_each_page_and_its_encoding(redis_url, key_prefix):
    llm = SteppedLLM()
    async with running_worker(redis_url, key_prefix, make_rag(llm)):
        rag = StreamingRAGClient(redis_url, prefix=key_prefix, poll_interval_s=5)
        try:
            job_id = await rag.asubmit("shared pages")
            fanout = rag._fanout
            assert fanout is not None
            pages: list[list[Sequence[StreamEvent]]] = [[], [], []]
            got = asyncio.Condition()

            async def follower(into: list[Sequence[StreamEvent]]) -> None:
                nudge = Nudge()
                keys = rag._keys(job_id)
                async for page in follow_pages(fanout, keys, "0-0", rag._stats, nudge):
                    if page is not NUDGED:
                        into.append(page)
                        async with got:
                            got.notify_all()

            async def all_saw(data: str) -> None:
                def seen(into: list[Sequence[StreamEvent]]) -> bool:
                    return any(e.data == data for page in into for e in page)

                async with asyncio.timeout(WAIT_S), got:
                    await got.wait_for(lambda: all(seen(into) for into in pages))

            tasks = [asyncio.create_task(follower(into)) for into in pages]
            llm.release(1)
            await all_saw("w0 ")  # each has caught up and waits on the shared log now
            marks = [len(into) for into in pages]
            for n in range(1, 6):  # one token at a time: each is one page of the log
                llm.release(1)
                await all_saw(f"w{n} ")
            llm.finish()
            await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
        finally:
            await rag.aclose()
    live = [into[mark:] for into, mark in zip(pages, marks, strict=True)]
    assert [[e.data for e in page] for page in live[0][:5]] == [[f"w{n} "] for n in range(1, 6)]
    for page_a, page_b, page_c in zip(*(pages[:5] for pages in live), strict=True):
        assert page_a is page_b is page_c  # one page object for the three
        assert format_page(page_a) is format_page(page_c)  # encoded once
    assert live[0][-1][-1].is_terminal
