"""redis-py clients, sync and asyncio, for a parsed server URL (`streaming_rag.wire.ServerSpec`).

Standalone URLs give a plain `redis.Redis` / `redis.asyncio.Redis`. Sentinel URLs give the
client of `Sentinel(...).master_for(service_name)`: its connection pool asks the sentinels for
the primary's address at every new connection, and drops idle connections to an old address
when the answer changes. A connection still open to a primary that was demoted to a replica
(`SENTINEL FAILOVER`, or a partition healed) gets a READONLY reply to its next write: redis-py's
`SentinelManagedConnection.read_response` (redis/sentinel.py and redis/asyncio/sentinel.py,
redis 5.x) turns that `ReadOnlyError` into a `ConnectionError` ("The previous master is now a
slave") after disconnecting, so the next command re-discovers the primary; a connection to a
primary that died fails with a `ConnectionError` and reconnects the same way. Our transports
translate those `ConnectionError`s into `ServerUnavailable`; whoever retries reaches the new
primary.

The sentinels are asked with `spec.sentinel_kwargs()` (the sentinel password, if any) and over
plain TCP; the data connections get `spec.connection_kwargs()` (db, credentials, TLS). Nothing
connects here: the first command does. Closing the client (`close()` / `aclose()`, which
disconnect its pool) also disconnects the connections to the sentinels.

Cluster URLs (events server only) give a `redis.cluster.RedisCluster` /
`redis.asyncio.cluster.RedisCluster` seeded with the URL's nodes: it learns the slot map from
the first node that answers, routes each command and script by its keys' slot, and follows
MOVED (a finished resharding or failover: it refreshes the map) and ASK (a slot mid-migration).
"""

from __future__ import annotations

from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel

from streaming_rag.exceptions import ServerUnavailable
from streaming_rag.wire import ServerSpec

__all__ = ["async_client", "sync_client"]


class _SentinelPool(redis.sentinel.SentinelConnectionPool):
    """redis-py's pool for a sentinel-managed primary that also disconnects the sentinels."""

    def disconnect(self, inuse_connections: bool = True) -> None:
        super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            sentinel.connection_pool.disconnect(inuse_connections)


class _AsyncSentinelPool(redis.asyncio.sentinel.SentinelConnectionPool):
    """redis-py's asyncio pool for a sentinel-managed primary that also disconnects the
    sentinels."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.connection_pool.disconnect(inuse_connections)


def sync_client(spec: ServerSpec) -> Any:
    """A `redis.Redis` for `spec`, following the primary when `spec` is a sentinel one; a
    `redis.cluster.RedisCluster` for a cluster one (which connects at once: no reachable node
    raises `ServerUnavailable`)."""
    if spec.kind == "cluster":
        node = redis.cluster.ClusterNode
        nodes = [node(host, port) for host, port in spec.nodes]  # type: ignore[no-untyped-call]
        try:  # redis-py's sync cluster client asks the nodes for the slot map right here
            return redis.cluster.RedisCluster(
                startup_nodes=nodes, require_full_coverage=False, **spec.connection_kwargs()
            )
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise ServerUnavailable(str(spec), str(exc) or type(exc).__name__) from exc
    if spec.kind == "sentinel":
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(spec.sentinels), sentinel_kwargs=spec.sentinel_kwargs(), **spec.connection_kwargs()
        )
        master = sentinel.master_for(  # type: ignore[no-untyped-call]
            spec.service_name or "", connection_pool_class=_SentinelPool
        )
        return cast(redis.Redis, master)
    return redis.Redis(**spec.connection_kwargs())


def async_client(spec: ServerSpec) -> Any:
    """A `redis.asyncio.Redis` for `spec`, following the primary when `spec` is a sentinel
    one; a `redis.asyncio.cluster.RedisCluster` for a cluster one."""
    if spec.kind == "cluster":
        nodes = [redis.asyncio.cluster.ClusterNode(host, port) for host, port in spec.nodes]
        return redis.asyncio.cluster.RedisCluster(
            startup_nodes=nodes, require_full_coverage=False, **spec.connection_kwargs()
        )
    if spec.kind == "sentinel":
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(spec.sentinels), sentinel_kwargs=spec.sentinel_kwargs(), **spec.connection_kwargs()
        )
        master = sentinel.master_for(
            spec.service_name or "", connection_pool_class=_AsyncSentinelPool
        )
        return cast(redis.asyncio.Redis, master)
    return redis.asyncio.Redis(**spec.connection_kwargs())
