"""The HTTP bridge over real connections: uvicorn on loopback, an in-process worker, httpx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.helpers_web import (
    MOUNT,
    WAIT_S,
    Comment,
    Message,
    Stack,
    as_messages,
    messages,
    sse,
    web_stack,
)
from tests.queue_apps import ANSWER_WORDS, GatedLLM

ANSWER = "".join(w + " " for w in ANSWER_WORDS)
CANCELLED = {"stage": "generation", "msg": "Cancelled"}


async def submit(stack: Stack, query: str = "What is RAG?") -> tuple[str, str]:
    response = await stack.http.post("/answers", json={"query": query})
    assert response.status_code == 202, response.text
    body = response.json()
    return body["job_id"], stack.url(body["events_url"])


async def reference(stack: Stack, job_id: str) -> list[Message]:
    """The job's whole trace as the client library sees it, framed as the bridge should."""
    return as_messages([e async for e in stack.rag.aevents(job_id)])


def chunks(trace: list[Message]) -> str:
    return "".join(m.data["data"] for m in trace if m.event == "chunk")


async def read_until_chunk(
    items: AsyncIterator[Message | Comment], text: str, into: list[Message | Comment]
) -> None:
    """Append items of `sse(response)` to `into` until the chunk `text` has arrived."""
    async for item in items:
        into.append(item)
        if isinstance(item, Message) and item.event == "chunk" and item.data["data"] == text:
            return
    raise AssertionError(f"stream ended before chunk {text!r}: {into}")


async def test_submit_and_stream_every_event_to_the_end(redis_url, key_prefix):
    async with web_stack(redis_url, key_prefix) as stack:
        response = await stack.http.post("/answers", json={"query": "What is RAG?"})
        assert response.status_code == 202
        body = response.json()
        job_id = body["job_id"]
        assert set(body) == {"job_id", "events_url", "status_url", "cancel_url", "watch_url"}
        assert body["events_url"] == f"{MOUNT}/answers/{job_id}/events"  # mount point kept
        assert body["status_url"] == body["cancel_url"] == f"{MOUNT}/answers/{job_id}"
        assert body["watch_url"] == f"{MOUNT}/?job={job_id}"  # no secret: no tokens
        assert response.headers["location"] == f"{MOUNT}/answers/{job_id}"
        async with stack.http.stream("GET", stack.url(body["events_url"])) as stream:
            assert stream.status_code == 200
            assert stream.headers["cache-control"] == "no-cache"
            assert stream.headers["x-accel-buffering"] == "no"
            trace = await messages(sse(stream))
        assert [m.event for m in trace] == [
            "retrieval_start",
            "retrieval_done",
            "generation_start",
            *["chunk"] * len(ANSWER_WORDS),
            "generation_done",
        ]
        assert chunks(trace) == ANSWER
        assert trace[1].data["data"]["num_docs"] == 2
        assert trace[0].data["latency"] == 0.0
        assert "total_latency" in trace[-1].data["data"]
        assert trace == await reference(stack, job_id)  # ids, data and latency, exactly


@pytest.mark.parametrize("how", ["last-event-id", "after"])
async def test_disconnect_after_3_events_and_resume_exactly_after_the_last_one(
    redis_url, key_prefix, how
):
    llm = GatedLLM()
    async with web_stack(redis_url, key_prefix, llm, keepalive_s=3600) as stack:
        job_id, events_url = await submit(stack)
        first: list[Message] = []
        async with stack.http.stream("GET", events_url) as stream:
            async for item in sse(stream):
                assert isinstance(item, Message)
                first.append(item)
                if len(first) == 3:
                    break
        # the job is stalled and no keep-alive is due for an hour: only noticing the
        # disconnect can end the server's follower, and it must not leak a reader
        await asyncio.wait_for(stack.app.state.streams.wait_idle(), WAIT_S)
        assert stack.app.state.streams.active == 0
        assert stack.rag._fanout is not None
        assert stack.rag._fanout.watching == 0  # the shared reader follows nothing any more
        # (a task may run a bare coroutine object, e.g. an async generator's finalizing athrow)
        names = [getattr(t.get_coro(), "__qualname__", None) for t in asyncio.all_tasks()]
        assert "_next" not in names

        last = first[-1].id
        assert last is not None
        if how == "last-event-id":
            request = stack.http.stream("GET", events_url, headers={"Last-Event-ID": last})
        else:
            request = stack.http.stream("GET", events_url, params={"after": last})
        rest: list[Message | Comment] = []
        async with request as stream:
            items = sse(stream)
            await read_until_chunk(items, "t1 ", rest)
            assert llm.release is not None
            llm.release.set()
            rest += await messages(items)
        full = await reference(stack, job_id)
        assert first == full[:3]
        assert rest == full[3:]  # exactly the rest: nothing repeated, nothing lost
        assert chunks(full) == "t0 t1 end"


async def test_last_event_id_wins_over_the_after_parameter(redis_url, key_prefix):
    async with web_stack(redis_url, key_prefix) as stack:
        job_id, events_url = await submit(stack)
        full = await reference(stack, job_id)
        headers = {"Last-Event-ID": full[4].id}
        async with stack.http.stream(
            "GET", events_url, params={"after": full[1].id}, headers=headers
        ) as stream:
            assert await messages(sse(stream)) == full[5:]
        response = await stack.http.get(events_url, params={"after": "not-an-id"})
        assert response.status_code == 422
        assert response.json()["detail"].startswith("after must be a stream entry id")


async def test_ten_concurrent_readers_of_one_job_get_identical_streams(redis_url, key_prefix):
    llm = GatedLLM()
    async with web_stack(redis_url, key_prefix, llm) as stack:
        job_id, events_url = await submit(stack)
        live = asyncio.Semaphore(0)

        async def reader() -> list[Message | Comment]:
            out: list[Message | Comment] = []
            async with stack.http.stream("GET", events_url) as stream:
                items = sse(stream)
                await read_until_chunk(items, "t1 ", out)
                live.release()  # from here on it waits for live events
                out += await messages(items)
            return out

        readers = [asyncio.create_task(reader()) for _ in range(10)]
        for _ in readers:
            await asyncio.wait_for(live.acquire(), WAIT_S)
        assert stack.app.state.streams.active == 10
        assert llm.release is not None
        llm.release.set()
        results = await asyncio.wait_for(asyncio.gather(*readers), WAIT_S)
        full = await reference(stack, job_id)
    assert all(result == full for result in results)
    assert chunks(full) == "t0 t1 end"
    assert full[-1].event == "generation_done"


async def test_cancel_ends_the_event_stream_with_the_cancelled_error(redis_url, key_prefix):
    llm = GatedLLM()
    async with web_stack(redis_url, key_prefix, llm) as stack:
        job_id, events_url = await submit(stack)
        async with stack.http.stream("GET", events_url) as stream:
            items = sse(stream)
            seen: list[Message | Comment] = []
            await read_until_chunk(items, "t1 ", seen)
            response = await stack.http.delete(f"/answers/{job_id}")
            assert response.status_code == 200
            assert response.json() == {"cancelled": True}
            seen += await messages(items)
        assert isinstance(seen[-1], Message)
        assert (seen[-1].event, seen[-1].data["data"]) == ("error", CANCELLED)
        assert chunks([m for m in seen if isinstance(m, Message)]) == "t0 t1 "
        assert llm.closed.is_set()
        status = (await stack.http.get(f"/answers/{job_id}")).json()
        assert status == {
            "job_id": job_id,
            "status": "cancelled",
            "watchers": 0,  # the event stream has ended
            "answer": "t0 t1 ",
            "error": CANCELLED,
            # GatedLLM reports no usage: the worker counted the chunks it generated
            "prompt_tokens": None,
            "completion_tokens": 2,
            "usage_source": "counted",
            "model": None,
            "finish_reason": "cancelled",
        }
        again = await stack.http.delete(f"/answers/{job_id}")
        assert again.json() == {"cancelled": False}  # it had already ended


async def test_status_shows_the_answer_once_done(redis_url, key_prefix):
    llm = GatedLLM()
    async with web_stack(redis_url, key_prefix, llm) as stack:
        job_id, events_url = await submit(stack)
        async with stack.http.stream("GET", events_url) as stream:
            items = sse(stream)
            seen: list[Message | Comment] = []
            await read_until_chunk(items, "t1 ", seen)
            running = (await stack.http.get(f"/answers/{job_id}")).json()
            # no answer yet; the open event stream watches it
            assert running == {"job_id": job_id, "status": "running", "watchers": 1}
            assert llm.release is not None
            llm.release.set()
            assert (await messages(items))[-1].event == "generation_done"
        done = await stack.http.get(f"/answers/{job_id}")
        assert done.status_code == 200
        assert done.json() == {
            "job_id": job_id,
            "status": "done",
            "watchers": 0,
            "answer": "t0 t1 end",
            "prompt_tokens": None,
            "completion_tokens": 3,
            "usage_source": "counted",
            "model": None,
            "finish_reason": None,
        }


async def test_keep_alive_comments_flow_while_a_job_stalls(redis_url, key_prefix):
    llm = GatedLLM()
    async with web_stack(redis_url, key_prefix, llm, keepalive_s=0.05) as stack:
        job_id, events_url = await submit(stack)
        async with stack.http.stream("GET", events_url) as stream:
            items = sse(stream)
            before: list[Message | Comment] = []
            async for item in items:  # the stall: events up to t1, then comments only
                before.append(item)
                if isinstance(item, Comment) and any(
                    isinstance(m, Message) and m.data["data"] == "t1 " for m in before
                ):
                    break
            assert llm.release is not None
            llm.release.set()
            after = [m async for m in items if isinstance(m, Message)]
        comments = [m for m in before if isinstance(m, Comment)]
        assert comments and set(comments) == {Comment("keep-alive")}
        assert [m.data["data"] for m in after if m.event == "chunk"] == ["end"]
        assert after[-1].event == "generation_done"
        trace = [m for m in before if isinstance(m, Message)] + after
        assert trace == await reference(stack, job_id)  # comments interleave, never replace
