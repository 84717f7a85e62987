"""`EmbeddedCluster`: a real Valkey Cluster (3 masters, 1 replica each) on 127.0.0.1.

Formation (all 16384 slots on 3 masters, every node agreeing), redis-py's sync and asyncio
cluster clients (keys on several masters, a Lua script on one slot), a slot migration held
half-way (ASK from the source) then finished (MOVED, followed by the cluster client), and a
killed master replaced by its replica with acknowledged writes kept. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio.cluster
import redis.cluster

from streaming_rag.exceptions import CLIError
from streaming_rag_cli.embedded_cluster import SLOTS, EmbeddedCluster

TIMEOUTS = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}


def _cluster_client(cluster: EmbeddedCluster) -> redis.cluster.RedisCluster:
    return redis.cluster.RedisCluster(startup_nodes=cluster.startup_nodes(), **TIMEOUTS)


def _direct(port: int) -> redis.Redis:
    """A plain client on one node: ASK / MOVED come back as errors."""
    return redis.Redis(host="127.0.0.1", port=port, **TIMEOUTS)


def _keys_on_distinct_masters(cluster: EmbeddedCluster, prefix: str) -> list[str]:
    """One key per master (found by slot), so commands go to every master."""
    found: dict[int, str] = {}
    for i in range(1000):
        key = f"{prefix}:{i}"
        found.setdefault(cluster.node_for_slot(cluster.key_slot(key)).port, key)
        if len(found) == 3:
            return list(found.values())
    raise AssertionError("no keys on 3 distinct masters in 1000 tries")


@pytest.fixture
def cluster_client(valkey_cluster: EmbeddedCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = _cluster_client(valkey_cluster)
    try:
        yield client
    finally:
        client.close()


def test_cluster_forms_with_all_slots_on_three_masters(valkey_cluster: EmbeddedCluster) -> None:
    masters = valkey_cluster.masters()
    assert len(masters) == 3
    spans = sorted(span for master in masters for span in master.slots)
    assert spans[0][0] == 0 and spans[-1][1] == SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))
    nodes = valkey_cluster.nodes
    assert len(nodes) == 6 and all(n.running and not n.failed for n in nodes)
    replicas = [n for n in nodes if n.role == "replica"]
    assert sorted(r.master_id or "" for r in replicas) == sorted(m.node_id for m in masters)
    for node in nodes:
        client = _direct(node.port)
        try:
            info = client.execute_command("CLUSTER", "INFO").decode()
        finally:
            client.close()
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info
    ports = ",".join(f"127.0.0.1:{m.port}" for m in sorted(masters, key=lambda m: m.slots[0]))
    assert valkey_cluster.url == f"redis+cluster://{ports}"
    assert valkey_cluster.key_slot("foo") == 12182  # the spec's example
    assert valkey_cluster.key_slot("{foo}.bar") == valkey_cluster.key_slot(b"foo")


def test_sync_cluster_client_sets_gets_and_runs_lua(
    valkey_cluster: EmbeddedCluster, cluster_client: redis.cluster.RedisCluster, key_prefix: str
) -> None:
    keys = _keys_on_distinct_masters(valkey_cluster, key_prefix)
    for key in keys:
        assert cluster_client.set(key, f"v-{key}")
    assert [cluster_client.get(key) for key in keys] == [f"v-{k}".encode() for k in keys]

    swap = cluster_client.register_script(
        "local a = redis.call('GET', KEYS[1]) "
        "redis.call('SET', KEYS[1], redis.call('GET', KEYS[2])) "
        "redis.call('SET', KEYS[2], a) return a"
    )
    a, b = f"{{{key_prefix}}}:a", f"{{{key_prefix}}}:b"
    assert valkey_cluster.key_slot(a) == valkey_cluster.key_slot(b)
    cluster_client.mset({a: "1", b: "2"})
    assert swap(keys=[a, b]) == b"1"
    assert cluster_client.mget(a, b) == [b"2", b"1"]
    cluster_client.delete(*keys, a, b)


async def test_async_cluster_client_sets_gets_and_runs_lua(
    valkey_cluster: EmbeddedCluster, key_prefix: str
) -> None:
    seeds = [redis.asyncio.cluster.ClusterNode(n.host, n.port) for n in valkey_cluster.masters()]
    client = redis.asyncio.cluster.RedisCluster(startup_nodes=seeds, **TIMEOUTS)
    try:
        keys = _keys_on_distinct_masters(valkey_cluster, key_prefix)
        for key in keys:
            assert await client.set(key, key)
        assert [await client.get(key) for key in keys] == [k.encode() for k in keys]
        incr_by = client.register_script(
            "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], 1)"
        )
        a, b = f"{{{key_prefix}}}:a", f"{{{key_prefix}}}:b"
        assert await incr_by(keys=[a, b], args=[5]) == 6
        assert await incr_by(keys=[a, b], args=[5]) == 12
        await client.delete(*keys, a, b)
    finally:
        await client.aclose()


def test_slot_migration_asks_midway_then_moves(fresh_cluster: EmbeddedCluster) -> None:
    moved_key, staying_key = "{mig}:moved", "{mig}:staying"
    slot = fresh_cluster.key_slot(moved_key)
    source = fresh_cluster.node_for_slot(slot)
    target = next(m for m in fresh_cluster.masters() if m.port != source.port)
    client = _cluster_client(fresh_cluster)
    on_source, on_target = _direct(source.port), _direct(target.port)
    try:
        client.mset({moved_key: "m", staying_key: "s"})
        migration = fresh_cluster.begin_migration(slot, target)
        assert fresh_cluster.move_keys(migration, [moved_key]) == 1

        with pytest.raises(redis.ResponseError) as ask:
            on_source.get(moved_key)
        assert str(ask.value) == f"ASK {slot} 127.0.0.1:{target.port}"
        assert on_source.get(staying_key) == b"s"  # not moved yet: still served here
        with pytest.raises(redis.ResponseError, match=rf"^MOVED {slot} "):
            on_target.get(moved_key)  # importing, but no ASKING first
        assert client.get(moved_key) == b"m"  # the cluster client follows the ASK
        assert client.get(staying_key) == b"s"

        fresh_cluster.finish_migration(migration)
        assert fresh_cluster.node_for_slot(slot).port == target.port
        with pytest.raises(redis.ResponseError) as moved:
            on_source.get(staying_key)
        assert str(moved.value) == f"MOVED {slot} 127.0.0.1:{target.port}"
        assert on_target.get(staying_key) == b"s"
        assert client.mget(moved_key, staying_key) == [b"m", b"s"]  # stale map: MOVED followed

        fresh_cluster.migrate_slot(slot, source)  # and back in one call
        assert fresh_cluster.node_for_slot(slot).port == source.port
        assert on_source.mget(moved_key, staying_key) == [b"m", b"s"]
        assert client.get(moved_key) == b"m"
    finally:
        for c in (client, on_source, on_target):
            c.close()


def test_killed_master_is_replaced_by_its_replica(fresh_cluster: EmbeddedCluster) -> None:
    keys = [f"{{fo}}:{i}" for i in range(50)]
    master = fresh_cluster.node_for_slot(fresh_cluster.key_slot(keys[0]))
    (replica,) = fresh_cluster.replicas_of(master)
    direct = _direct(master.port)
    try:
        direct.mset({key: key for key in keys})
        assert direct.execute_command("WAIT", 1, 5000) == 1  # the replica has them
    finally:
        direct.close()

    started = time.monotonic()
    fresh_cluster.kill_master(master)
    promoted = fresh_cluster.wait_for_failover(master, timeout_s=20.0)
    took = time.monotonic() - started
    assert promoted.port == replica.port and promoted.role == "master"
    assert promoted.slots == master.slots and took < 20.0
    assert fresh_cluster.node_for_slot(fresh_cluster.key_slot(keys[0])).port == replica.port

    client = _cluster_client(fresh_cluster)  # a seed (the dead master) is skipped
    try:
        assert client.mget(keys) == [k.encode() for k in keys]
        assert client.set("{fo}:after", "x") and client.get("{fo}:after") == b"x"
    finally:
        client.close()


def test_start_failing_midway_leaves_nothing_running() -> None:
    pids: list[int] = []

    class Broken(EmbeddedCluster):
        def _form(self) -> None:
            pids.extend(s.pid or 0 for s in self._servers)
            raise CLIError("formation failed on purpose")

    cluster = Broken(masters=3, replicas=1)
    with pytest.raises(CLIError, match="on purpose"):
        cluster.start()
    assert len(pids) == 6 and all(pids)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(RuntimeError):
        _ = cluster.url
    cluster.stop()  # idempotent
