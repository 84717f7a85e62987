"""Sentinel URLs for real: a primary, a replica and one sentinel (embedded Valkeys of this module,
never the suite's shared server), a real worker and a real client on
``redis+sentinel://127.0.0.1:<sentinel port>/<service>``, through a failover.

This proves that connections follow the primary (a job is answered through the new primary
after `SENTINEL FAILOVER`); a failover *in the middle of* an answer is tested elsewhere.

The failover is Valkey's coordinated one (``SENTINEL FAILOVER <service> COORDINATED``): the old
primary is demoted before the replica is promoted, so connections still open to it get READONLY
on their next write and move to the new primary. (A plain ``SENTINEL FAILOVER`` leaves the old
primary writable until the sentinel converts it into a replica, about ten seconds later: until
then open connections keep writing there, and what they wrote is dropped by the resync.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from streaming_rag.exceptions import ServerUnavailable
from streaming_rag.wire import parse_url
from streaming_rag_cli.embedded import EmbeddedValkey
from streaming_rag_client import StreamingRAGClient
from streaming_rag_client._connect import async_client, sync_client
from streaming_rag_client._transport import raw_view
from tests.helpers_queue import running_worker
from tests.helpers_queue import wait_until as _wait_until
from tests.queue_apps import ANSWER_WORDS, make_rag

pytestmark = pytest.mark.single_server

SERVICE = "srag-test"
ANSWER = "".join(w + " " for w in ANSWER_WORDS)
WAIT_S = 30.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """`helpers_queue.wait_until` with this module's bound."""
    _wait_until(condition, what, timeout_s)


def admin(server: EmbeddedValkey) -> redis.Redis:
    return redis.Redis(
        host=server.host,
        port=server.port,
        socket_timeout=5,
        socket_connect_timeout=5,
        decode_responses=True,
    )


def as_dict(reply: Any) -> dict[str, Any]:
    """A SENTINEL REPLICAS entry (a flat list under RESP2) as a dict."""
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


@dataclass
class Deployment:
    primary: EmbeddedValkey
    replica: EmbeddedValkey
    sentinel: EmbeddedValkey

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}"

    def primary_port(self) -> int:
        with admin(self.sentinel) as s:
            return int(s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])

    def replica_ready(self) -> bool:
        """The sentinel knows the replica as a healthy one (a failover needs one)."""
        with admin(self.sentinel) as s:
            replicas = [as_dict(r) for r in s.execute_command("SENTINEL", "REPLICAS", SERVICE)]
        return any(r["flags"] == "slave" and r["master-link-status"] == "ok" for r in replicas)

    def role(self, server: EmbeddedValkey) -> str:
        with admin(server) as c:
            return str(c.execute_command("ROLE")[0])


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """A primary, its replica and one sentinel monitoring them (quorum 1, fast timeouts)."""
    started: list[EmbeddedValkey] = []
    try:
        primary = EmbeddedValkey().start()
        started.append(primary)
        replica = EmbeddedValkey(config={"replicaof": f"127.0.0.1 {primary.port}"}).start()
        started.append(replica)

        def linked() -> bool:
            with admin(replica) as c:
                return bool(c.info("replication").get("master_link_status") == "up")

        wait_until(linked, "the replica to sync with the primary")
        sentinel = EmbeddedValkey(
            sentinel=True,
            config={
                "sentinel monitor": f"{SERVICE} 127.0.0.1 {primary.port} 1",
                "sentinel down-after-milliseconds": f"{SERVICE} 1000",
                "sentinel failover-timeout": f"{SERVICE} 3000",
            },
        ).start()
        started.append(sentinel)
        found = Deployment(primary, replica, sentinel)
        wait_until(found.replica_ready, "the sentinel to know the replica")
        yield found
    finally:
        for server in reversed(started):
            server.stop()


def failover(deployment: Deployment) -> tuple[EmbeddedValkey, EmbeddedValkey]:
    """A coordinated `SENTINEL FAILOVER`; waits (bounded) until the sentinel names the other
    server and the old primary reports itself a replica. Returns (old, new) primary."""
    servers = {s.port: s for s in (deployment.primary, deployment.replica)}
    old = servers[deployment.primary_port()]
    new = deployment.replica if old is deployment.primary else deployment.primary
    wait_until(deployment.replica_ready, "a healthy replica to promote")
    with admin(deployment.sentinel) as s:
        assert s.execute_command("SENTINEL", "FAILOVER", SERVICE, "COORDINATED") in ("OK", True)
    wait_until(lambda: deployment.primary_port() == new.port, "the sentinel to name the replica")
    wait_until(lambda: deployment.role(old) == "slave", "the old primary to become a replica")
    wait_until(lambda: deployment.role(new) == "master", "the new primary to take writes")
    return old, new


async def test_worker_and_client_follow_the_primary_through_a_failover(
    deployment: Deployment, key_prefix: str
) -> None:
    url = deployment.url
    async with (
        running_worker(url, key_prefix, make_rag()),
        StreamingRAGClient(url, prefix=key_prefix, poll_interval_s=0.2) as rag,
    ):
        before = await asyncio.wait_for(rag.aquery("before the failover"), WAIT_S)
        assert before["answer"] == ANSWER
        sync_before = await asyncio.to_thread(rag.query, "sync, before")
        assert sync_before["answer"] == ANSWER

        old, new = await asyncio.to_thread(failover, deployment)

        # the old primary refuses writes now: these answers went through the new one, over
        # the same worker and client objects
        with admin(old) as c, pytest.raises(redis.exceptions.ReadOnlyError):
            c.set(f"{key_prefix}:probe", 1)
        after = await asyncio.wait_for(rag.aquery("after the failover"), WAIT_S)
        assert after["answer"] == ANSWER
        sync_after = await asyncio.to_thread(rag.query, "sync, after")
        assert sync_after["answer"] == ANSWER
    assert deployment.primary_port() == new.port != old.port


def test_raw_view_shares_a_sentinel_managed_pool(deployment: Deployment, key_prefix: str) -> None:
    """`raw_view` (what the transports read with) builds a client on the same sentinel-managed
    pool, sync and asyncio, with and without its own connection."""
    spec = parse_url(deployment.url)
    client = sync_client(spec)
    key = f"{key_prefix}:raw"
    try:
        entry = client.xadd(key, {"f": "v"})
        view = raw_view(client)
        assert view.connection_pool is client.connection_pool
        [[stream, [[entry_id, fields]]]] = view.xread({key: "0-0"})  # raw: no dict per entry
        assert (stream, entry_id, fields) == (key.encode(), entry, [b"f", b"v"])
        assert client.xread({key: "0-0"})[0][1][0][1] == {b"f": b"v"}  # the caller's: parsed
    finally:
        client.close()

    async def via_asyncio() -> None:
        aclient = async_client(spec)
        try:
            aview = raw_view(aclient, single_connection=True)
            assert aview.connection_pool is aclient.connection_pool
            [[_, [[entry_id, fields]]]] = await aview.xread({key: "0-0"}, block=100)
            assert (entry_id, fields) == (entry, [b"f", b"v"])
            await aview.aclose()
        finally:
            await aclient.aclose()

    asyncio.run(via_asyncio())


def test_unreachable_sentinels_are_a_server_unavailable_without_the_password() -> None:
    url = "redis+sentinel://:s3cret@127.0.0.1:1/nowhere?sentinel_password=s3cret"
    with StreamingRAGClient(url, reconnect_s=0.2) as rag, pytest.raises(ServerUnavailable) as info:
        rag.submit("q")
    assert "s3cret" not in str(info.value)
    assert "redis+sentinel://:***@127.0.0.1:1/nowhere?sentinel_password=***" in str(info.value)


async def test_client_logs_in_to_password_protected_sentinels(
    deployment: Deployment, key_prefix: str
) -> None:
    """`?sentinel_password=` reaches the sentinels (the client's; the worker cannot pass one,
    so it uses the open sentinel of the deployment); a wrong one is a `ServerUnavailable`
    that shows neither password."""
    monitor = f"{SERVICE} 127.0.0.1 {deployment.primary_port()} 1"
    guarded = EmbeddedValkey(sentinel=True, config={"sentinel monitor": monitor}).start()
    try:
        with admin(guarded) as s:
            s.execute_command("ACL", "SETUSER", "default", "resetpass", ">s3cret")
        url = f"redis+sentinel://127.0.0.1:{guarded.port}/{SERVICE}"
        async with (
            running_worker(deployment.url, key_prefix, make_rag()),
            StreamingRAGClient(f"{url}?sentinel_password=s3cret", prefix=key_prefix) as rag,
        ):
            answer = await asyncio.wait_for(rag.aquery("via a guarded sentinel"), WAIT_S)
            assert answer["answer"] == ANSWER
        wrong = StreamingRAGClient(f"{url}?sentinel_password=n0pe", reconnect_s=0.2)
        with wrong, pytest.raises(ServerUnavailable) as info:
            wrong.submit("q")
        assert "n0pe" not in str(info.value) and "s3cret" not in str(info.value)
        assert "sentinel_password=***" in str(info.value)
    finally:
        guarded.stop()
