"""Subscribers ride through Redis outages (`reconnect_s`), with faults injected for real.

The worker talks to a dedicated Valkey (AOF on) directly; the client talks to it through a
`tests.faults.TcpProxy`, whose `cut()` drops the client's connections mid-answer and whose
`pause()` refuses new ones for a while. Every kind of subscriber (sync, async fan-out, async
own reads, SSE) must then see every event exactly once, in order, identical to a replay. One
more test restarts the server itself under both worker and client (xfail until the worker
rides through too). The first tests drive the transports' retry loop without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio

from streaming_rag import StreamEvent
from streaming_rag.exceptions import InvalidRequest, ServerUnavailable
from streaming_rag.wire import JobKeys
from streaming_rag_cli.embedded import EmbeddedValkey
from streaming_rag_client import StreamingRAGClient
from streaming_rag_client._core import plan_submit
from streaming_rag_client._sse import UNAVAILABLE
from streaming_rag_client._transport import AsyncTransport, SyncTransport
from streaming_rag_client.web import create_app
from tests.faults import TcpProxy
from tests.helpers_queue import running_worker
from tests.helpers_web import Comment, serving, sse
from tests.queue_apps import make_rag

pytestmark = pytest.mark.single_server

WAIT_S = 30.0  # liveness guard only: the awaited conditions come far sooner
USER, PASSWORD = "outage-tester", "s3cret-outage-pw"
PHASES = [["a0 ", "a1 "], [f"b{i} " for i in range(5)], ["c0 ", "c1 "]]
ANSWER = "".join(t for phase in PHASES for t in phase)
BEFORE_C = 3 + len(PHASES[0]) + len(PHASES[1])  # entries once phase B is out: 3 + chunks
PAUSE_S = 0.4  # how long the server stays away in the "pause" outages
KINDS = ["sync", "fanout", "own-reads", "sse"]
SUBSCRIBERS = {"sync": 2, "fanout": 3, "own-reads": 2, "sse": 2}


# -- the retry loop, without a server ----------------------------------------------------------


class Flaky:
    """An operation failing with `errors` (one per attempt) before it answers `result`."""

    def __init__(self, errors: list[BaseException], result: Any = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.attempts = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result

    async def acall(self) -> Any:
        return self()


def sync_transport(reconnect_s: float, *, ever_up: bool = True) -> SyncTransport:
    """A transport never connected to in these tests; `ever_up`: as if an earlier call had
    been answered (an outage, not a first contact that fails)."""
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:1/0"
    t = SyncTransport(redis.Redis.from_url(url), url, 1000, reconnect_s=reconnect_s)
    t.outages.ever_up = ever_up
    return t


def async_transport(reconnect_s: float, *, ever_up: bool = True) -> AsyncTransport:
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:1/0"
    t = AsyncTransport(redis.asyncio.Redis.from_url(url), url, 1000, reconnect_s=reconnect_s)
    t.outages.ever_up = ever_up
    return t


def test_a_first_contact_that_fails_is_reported_at_once_but_a_loading_server_is_awaited():
    refused = Flaky([redis.exceptions.ConnectionError("Error 111 connecting")])
    with pytest.raises(ServerUnavailable, match="Error 111"):
        sync_transport(WAIT_S, ever_up=False).call(refused)
    assert refused.attempts == 1
    loading = Flaky([redis.exceptions.BusyLoadingError("Valkey is loading the dataset")])
    assert sync_transport(WAIT_S, ever_up=False).call(loading) == "ok"
    assert loading.attempts == 2


DOWN = [
    redis.exceptions.ConnectionError("Connection closed by server."),
    redis.exceptions.TimeoutError("Timeout reading from socket"),
    ConnectionResetError(104, "Connection reset by peer"),
    redis.exceptions.BusyLoadingError("Valkey is loading the dataset in memory"),
    redis.exceptions.ResponseError("UNBLOCKED force unblock from blocking operation, ..."),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.ResponseError("MASTERDOWN Link with MASTER is down and ..."),
]


def test_a_call_retries_through_every_kind_of_outage_error_and_logs_it_once(caplog):
    caplog.set_level(logging.INFO, logger="streaming_rag.client")
    op = Flaky(list(DOWN))
    assert sync_transport(WAIT_S).call(op) == "ok"
    assert op.attempts == len(DOWN) + 1
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in logged] == [logging.WARNING, logging.INFO]
    assert "unreachable" in logged[0][1] and "back after" in logged[1][1]
    assert all(PASSWORD not in message for _, message in logged)


async def test_an_async_call_retries_and_gives_up_after_reconnect_s():
    t = async_transport(0.3)
    op = Flaky([redis.exceptions.ConnectionError("Error 111 connecting")] * 3)
    assert await t.call(op.acall) == "ok"
    forever = Flaky([redis.exceptions.ConnectionError("Error 111 connecting")] * 10_000)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as info:
        await t.call(forever.acall)
    assert 0.3 <= time.monotonic() - started < 0.3 + 1.0
    message = str(info.value)
    assert re.search(r"unreachable for 0\.[3-9] s", message), message
    assert f"{USER}:***@127.0.0.1:1" in message
    assert PASSWORD not in message
    assert forever.attempts > 3  # it kept trying, with backoff in between


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.AuthenticationError("invalid username-password pair"),
        redis.exceptions.AuthorizationError("NOPERM"),
    ],
)
def test_errors_that_no_wait_heals_are_raised_at_once(error):
    op = Flaky([error])
    with pytest.raises(ServerUnavailable):
        sync_transport(WAIT_S).call(op)
    assert op.attempts == 1


def test_a_server_that_does_not_speak_the_protocol_is_not_retried():
    op = Flaky([redis.exceptions.InvalidResponse('Protocol error, got "H" as reply type byte')])
    with pytest.raises(ServerUnavailable, match="does not speak the Redis protocol"):
        sync_transport(WAIT_S).call(op)
    assert op.attempts == 1


def test_other_errors_pass_through_untouched():
    op = Flaky([redis.exceptions.ResponseError("WRONGTYPE")])
    with pytest.raises(redis.exceptions.ResponseError):
        sync_transport(WAIT_S).call(op)
    assert op.attempts == 1


def test_a_retried_cancel_that_finds_the_job_cancelled_did_it():
    t = sync_transport(WAIT_S)
    t._cancel = Flaky([redis.exceptions.ConnectionError("reply lost")], b"cancelled")  # type: ignore[assignment]
    assert t.cancel(JobKeys("p", "j")) == ("cancelled", True)
    t._cancel = Flaky([], b"cancelled")  # type: ignore[assignment]
    assert t.cancel(JobKeys("p", "j")) == ("cancelled", False)


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_reconnect_s_must_be_positive(value):
    with pytest.raises(InvalidRequest, match="reconnect_s"):
        StreamingRAGClient("redis://127.0.0.1:1/0", reconnect_s=value)


def test_create_app_passes_reconnect_s_to_the_client_it_builds():
    assert create_app(redis_url="redis://127.0.0.1:1/0", reconnect_s=5).state.rag.reconnect_s == 5
    assert create_app(redis_url="redis://127.0.0.1:1/0").state.rag.reconnect_s == 30.0
    with pytest.raises(InvalidRequest, match="reconnect_s"):
        create_app(redis_url="redis://127.0.0.1:1/0", reconnect_s=0)


# -- a dedicated server, a proxy, a paced answer ----------------------------------------------


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """This module's own server (restartable; AOF on, so a restart keeps every stream). The
    default user has no password (the worker's); `USER` has `PASSWORD` (the clients')."""
    acl = {f"user {USER}": f"on >{PASSWORD} ~* &* +@all", "appendfsync": "always"}
    data_dir: Path = tmp_path_factory.mktemp("outages")
    with EmbeddedValkey(data_dir=data_dir, appendonly=True, config=acl) as server:
        yield server


@pytest.fixture
def proxy(valkey: EmbeddedValkey) -> Iterator[TcpProxy]:
    with TcpProxy(valkey.port) as p:
        yield p


def client_url(proxy: TcpProxy) -> str:
    return proxy.url(userinfo=f"{USER}:{PASSWORD}")


class PhasedLLM:
    """Yields `PHASES[0]`, then each next phase once `go(i)` allowed it (called on the loop)."""

    def __init__(self) -> None:
        self.gates = [asyncio.Event() for _ in PHASES]

    def go(self, phase: int) -> None:
        self.gates[phase].set()

    def finish(self) -> None:
        for gate in self.gates:
            gate.set()

    async def astream(self, prompt: str) -> AsyncIterator[str]:
        for i, tokens in enumerate(PHASES):
            if i:
                await self.gates[i].wait()
            for token in tokens:
                yield token


Item = tuple[str | None, str, Any, float]  # entry id, type, data (JSON-normalised), latency


def normalised(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


def item_of(event: StreamEvent) -> Item:
    return (event.id, event.type.value, normalised(event.data), event.latency)


@dataclass
class Trace:
    """What one subscriber saw (events, and when keep-alive comments came), on the test's loop."""

    items: list[Item] = field(default_factory=list)
    comments: list[tuple[float, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.changed.set()

    def comment(self, text: str) -> None:
        self.comments.append((time.monotonic(), text))
        self.changed.set()

    def saw(self, chunk: str) -> bool:
        return any(kind == "chunk" and data == chunk for _, kind, data, _ in self.items)

    async def wait_for(self, chunk: str) -> None:
        async with asyncio.timeout(WAIT_S):
            while not self.saw(chunk):
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Subscribers:
    traces: list[Trace]
    tasks: list[asyncio.Task[None]]

    async def all_saw(self, chunk: str) -> None:
        await asyncio.gather(*(t.wait_for(chunk) for t in self.traces))

    async def results(self) -> list[BaseException | None]:
        """Wait for every subscriber to end; what each raised (None: it ended normally)."""
        done, _ = await asyncio.wait(self.tasks, timeout=WAIT_S)
        assert len(done) == len(self.tasks), "a subscriber did not end"
        return [t.exception() for t in self.tasks]


def _sync_follow(rag: StreamingRAGClient, job_id: str, add: Callable[[Item], None]) -> None:
    for event in rag.events(job_id):
        add(item_of(event))


@contextlib.asynccontextmanager
async def subscribing(kind: str, rag: StreamingRAGClient) -> AsyncIterator[Any]:
    """A starter: `start(job_id)` -> `Subscribers` of `kind`, following the job through `rag`
    (for "sse": through the bridge over `rag`, served by uvicorn, read with httpx)."""
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        http: httpx.AsyncClient | None = None
        if kind == "sse":
            origin = await stack.enter_async_context(serving(create_app(rag, keepalive_s=0.1)))
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=origin, timeout=WAIT_S)
            )

        async def one(job_id: str, trace: Trace) -> None:
            if kind == "sync":

                def add(item: Item) -> None:
                    loop.call_soon_threadsafe(trace.add, item)

                await asyncio.to_thread(_sync_follow, rag, job_id, add)
            elif kind == "sse":
                assert http is not None
                async with http.stream("GET", f"/answers/{job_id}/events") as response:
                    assert response.status_code == 200, await response.aread()
                    async for m in sse(response):
                        if isinstance(m, Comment):
                            trace.comment(m.text)
                        else:
                            trace.add((m.id, m.event, m.data["data"], m.data["latency"]))
            else:
                async for event in rag.aevents(job_id):
                    trace.add(item_of(event))

        started: list[asyncio.Task[None]] = []

        def start(job_id: str) -> Subscribers:
            traces = [Trace() for _ in range(SUBSCRIBERS[kind])]
            tasks = [asyncio.create_task(one(job_id, trace)) for trace in traces]
            started.extend(tasks)
            return Subscribers(traces, tasks)

        try:
            yield start
        finally:  # a failed test leaves none behind (a sync one ends with its job)
            for task in started:
                task.cancel()
            if started:
                await asyncio.wait(started, timeout=WAIT_S)


async def replay(valkey: EmbeddedValkey, prefix: str, job_id: str) -> list[Item]:
    """The job's whole trace, read afterwards straight from the server."""
    rag = StreamingRAGClient(valkey.url, prefix=prefix)
    try:
        return [item_of(e) async for e in rag.aevents(job_id)]
    finally:
        await rag.aclose()


async def wait_entries(valkey: EmbeddedValkey, keys: JobKeys, count: int) -> None:
    """Until the job's stream holds `count` entries (blocking reads straight from the server)."""
    r = redis.asyncio.Redis.from_url(valkey.url)
    try:
        async with asyncio.timeout(WAIT_S):
            while await r.xlen(keys.events) < count:
                await r.xread({keys.events: "$"}, block=200)
    finally:
        await r.aclose()


def assert_complete(trace: list[Item]) -> None:
    kinds = [kind for _, kind, _, _ in trace]
    assert kinds[-1] == "generation_done"
    assert sum(kind in ("generation_done", "error") for kind in kinds) == 1
    assert "".join(data for _, kind, data, _ in trace if kind == "chunk") == ANSWER
    ids = [entry_id for entry_id, _, _, _ in trace]
    assert len(set(ids)) == len(ids)


# -- outages shorter than reconnect_s: nothing lost, nothing repeated ---------------------------


@pytest.mark.parametrize("outage", ["cut", "pause"])
@pytest.mark.parametrize("kind", KINDS)
async def test_subscribers_ride_through_an_outage(valkey, proxy, key_prefix, kind, outage, caplog):
    caplog.set_level(logging.INFO, logger="streaming_rag.client")
    llm = PhasedLLM()
    rag = StreamingRAGClient(
        client_url(proxy),
        prefix=key_prefix,
        poll_interval_s=0.2,
        reconnect_s=WAIT_S,
        fanout=kind != "own-reads",
    )
    try:
        async with (
            running_worker(valkey.url, key_prefix, make_rag(llm)),
            subscribing(kind, rag) as start,
        ):
            job_id = await rag.asubmit("through an outage")
            subs = start(job_id)
            await subs.all_saw("a1 ")
            down = time.monotonic()
            cut = proxy.pause() if outage == "pause" else proxy.cut()
            assert cut >= 1  # the client's connections, every one of them
            llm.go(1)  # phase B is written while the client is cut off
            await wait_entries(valkey, JobKeys(key_prefix, job_id), BEFORE_C)
            if outage == "pause":
                await asyncio.sleep(max(0.0, down + PAUSE_S - time.monotonic()))  # the downtime
                proxy.resume()
            back = time.monotonic()
            await subs.all_saw(PHASES[1][-1])
            recovered_s = time.monotonic() - back
            llm.go(2)
            raised = await subs.results()
        assert raised == [None] * len(subs.tasks)
        full = await replay(valkey, key_prefix, job_id)
    finally:
        llm.finish()
        await rag.aclose()
    assert_complete(full)
    for trace in subs.traces:
        assert trace.items == full  # entry id for entry id, data and latency, exactly once
    if kind == "sse" and outage == "pause":
        assert any(down < at < back for at, _ in subs.traces[0].comments)  # keep-alives flowed
    records = [r for r in caplog.records if r.name == "streaming_rag.client"]
    assert all(PASSWORD not in r.getMessage() for r in records)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    backs = [r.getMessage() for r in records if "back after" in r.getMessage()]
    logged = [(r.levelname, r.getMessage()) for r in records]
    assert warnings and all("unreachable" in message for message in warnings), logged
    assert backs and all(r.levelno == logging.INFO for r in records if r.levelno != logging.WARNING)
    if kind != "sync":  # one event loop: exactly one outage logged, once each way
        assert (len(warnings), len(backs)) == (1, 1)
    print(f"\n{kind}/{outage}: every subscriber caught up {recovered_s * 1000:.0f} ms after resume")


async def test_the_fanout_reader_stops_retrying_once_its_subscribers_left(
    valkey, proxy, key_prefix, caplog
):
    caplog.set_level(logging.INFO, logger="streaming_rag.client")
    llm = PhasedLLM()
    rag = StreamingRAGClient(client_url(proxy), prefix=key_prefix, reconnect_s=WAIT_S)
    try:
        async with (
            running_worker(valkey.url, key_prefix, make_rag(llm)),
            subscribing("fanout", rag) as start,
        ):
            subs = start(await rag.asubmit("nobody waits"))
            await subs.all_saw("a1 ")
            assert rag._fanout is not None and rag._fanout.readers == 1
            (group,) = rag._fanout._groups.values()
            reader = group.reader
            assert reader is not None
            proxy.pause()
            for task in subs.tasks:
                task.cancel()
            await asyncio.wait(subs.tasks, timeout=WAIT_S)
            done, _ = await asyncio.wait({reader}, timeout=WAIT_S)  # within one backoff step
            assert done and reader.exception() is None
            assert rag._fanout.watching == 0
            assert not [r for r in caplog.records if "back after" in r.getMessage()]
            proxy.resume()
    finally:
        llm.finish()
        await rag.aclose()


async def test_a_submit_retried_after_a_lost_reply_queues_the_job_once(valkey, key_prefix):
    """SUBMIT carries a per-submit nonce, so the transport may retry it blindly."""
    plan = plan_submit(
        "once",
        None,
        job_id=None,
        prefix=key_prefix,
        max_query_chars=1000,
        start_timeout_s=30,
        retention_s=60,
    )
    t = AsyncTransport(redis.asyncio.Redis.from_url(valkey.url), valkey.url, 60_000)
    try:
        assert await t.submit(plan)
        assert await t.submit(plan)  # as a retry after a lost reply would
        assert await t.client.zcard(plan.keys.queue) == 1
        again = plan_submit(
            "other",
            None,
            job_id=plan.job_id,
            prefix=key_prefix,
            max_query_chars=1000,
            start_timeout_s=30,
            retention_s=60,
        )
        assert not await t.submit(again)  # another submit with that id is still refused
    finally:
        await t.aclose()


# -- outages longer than reconnect_s: ServerUnavailable, with the password masked ---------------


@pytest.mark.parametrize("kind", KINDS)
async def test_an_outage_longer_than_reconnect_s_raises_server_unavailable(
    valkey, proxy, key_prefix, kind
):
    llm = PhasedLLM()
    reconnect_s = 0.5
    rag = StreamingRAGClient(
        client_url(proxy),
        prefix=key_prefix,
        poll_interval_s=0.2,
        reconnect_s=reconnect_s,
        fanout=kind != "own-reads",
    )
    try:
        async with (
            running_worker(valkey.url, key_prefix, make_rag(llm)),
            subscribing(kind, rag) as start,
        ):
            job_id = await rag.asubmit("a long outage")
            subs = start(job_id)
            await subs.all_saw("a1 ")
            down = time.monotonic()
            proxy.pause()
            raised = await subs.results()
            gave_up_s = time.monotonic() - down
            with pytest.raises(ServerUnavailable) as direct:
                await rag.astatus(job_id)
            proxy.resume()
            llm.finish()
    finally:
        llm.finish()
        await rag.aclose()
    messages = [str(direct.value)]
    if kind == "sse":  # the streams ended cleanly, with the comment saying why
        assert raised == [None] * len(subs.tasks)
        for trace in subs.traces:
            assert trace.comments[-1][1] == UNAVAILABLE.decode().strip()[1:].strip()
            assert trace.items and trace.items[-1][1] == "chunk"  # no terminal event: resume
    else:
        assert all(isinstance(exc, ServerUnavailable) for exc in raised), raised
        messages += [str(exc) for exc in raised]
    for message in messages:
        assert PASSWORD not in message
        assert f"{USER}:***@127.0.0.1:{proxy.port}" in message
        assert "unreachable for" in message
    assert reconnect_s <= gave_up_s < reconnect_s + 5.0
    print(f"\n{kind}: gave up {gave_up_s * 1000:.0f} ms after the server went away")


async def test_the_bridge_answers_503_without_the_password_after_reconnect_s(
    valkey, proxy, key_prefix
):
    rag = StreamingRAGClient(client_url(proxy), prefix=key_prefix, reconnect_s=0.3)
    try:
        async with (
            serving(create_app(rag)) as origin,
            httpx.AsyncClient(base_url=origin, timeout=WAIT_S) as http,
        ):
            # the bridge has talked to Redis (a first contact that fails is reported at once)
            assert (await http.get("/answers/never-submitted")).status_code == 404
            proxy.pause()
            response = await http.post("/answers", json={"query": "anyone there?"})
            assert response.status_code == 503
            detail = response.json()["detail"]
            assert PASSWORD not in detail and "unreachable for" in detail
            proxy.resume()
            response = await http.post("/answers", json={"query": "back?"})
            assert response.status_code == 202
    finally:
        await rag.aclose()


# -- a real restart, under the worker too --------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_subscribers_and_worker_ride_through_a_server_restart(valkey, key_prefix, kind):
    llm = PhasedLLM()
    url = valkey.url.replace("redis://", f"redis://{USER}:{PASSWORD}@")
    rag = StreamingRAGClient(
        url,
        prefix=key_prefix,
        poll_interval_s=0.2,
        reconnect_s=WAIT_S,
        fanout=kind != "own-reads",
    )
    try:
        async with (
            running_worker(valkey.url, key_prefix, make_rag(llm)),
            subscribing(kind, rag) as start,
        ):
            job_id = await rag.asubmit("through a restart")
            subs = start(job_id)
            await subs.all_saw("a1 ")
            await asyncio.to_thread(valkey.restart)  # the loop keeps running meanwhile
            llm.go(1)
            llm.go(2)
            raised = await subs.results()
        assert raised == [None] * len(subs.tasks)
        full = await replay(valkey, key_prefix, job_id)
    finally:
        llm.finish()
        await rag.aclose()
    assert_complete(full)
    for trace in subs.traces:
        assert trace.items == full


# -- the proxy itself ---------------------------------------------------------------------------


def test_the_proxy_holds_new_connections_while_paused_and_forwards_them_on_resume(valkey):
    with TcpProxy(valkey.port) as proxy:
        client = redis.Redis.from_url(proxy.url(), socket_timeout=WAIT_S)
        try:
            assert client.ping()
            assert proxy.pause(hold=True) == 1
            assert not proxy.open_links
            result: list[Any] = []
            pinger = threading.Thread(target=lambda: result.append(client.ping()))
            pinger.start()
            pinger.join(0.3)  # long enough for a forwarded PING to have come back
            assert pinger.is_alive() and not result  # held, unanswered
            proxy.resume()
            pinger.join(WAIT_S)
            assert result == [True]
        finally:
            client.close()
