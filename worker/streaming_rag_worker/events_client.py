"""The worker's client of the events server, when `WorkerConfig.events_url` names one apart from
the queue server: a `redis.asyncio.Redis` (standalone), the primary of a Sentinel service
(`Sentinel(...).master_for`), or a `redis.asyncio.cluster.RedisCluster` (a cluster URL).

On a cluster, redis-py routes each command and script call by its keys' slot, follows MOVED
(refreshing its slot map) and ASK (a slot being migrated) by itself, and loads a script on
every primary when one answers NOSCRIPT. Every per-job script declares only one job's keys
(one slot), so each runs where its job lives.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel

from streaming_rag.wire import ServerSpec

__all__ = ["connect_events", "is_cluster"]


def connect_events(spec: ServerSpec) -> Any:
    """A client of the events server `spec` (nothing connects until the first command)."""
    if spec.kind == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in spec.nodes]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=nodes, require_full_coverage=False, **spec.connection_kwargs()
        )
    if spec.kind == "sentinel":
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(spec.sentinels), sentinel_kwargs=spec.sentinel_kwargs(), **spec.connection_kwargs()
        )
        return sentinel.master_for(spec.service_name or "")
    return redis.asyncio.Redis(**spec.connection_kwargs())


def is_cluster(client: Any) -> bool:
    """Whether `client` is a Redis Cluster client (no multi-slot pipelines, no WAIT without a
    node)."""
    return isinstance(client, redis.asyncio.cluster.RedisCluster)
