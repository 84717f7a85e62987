"""The client's outage policy: which errors mean "not reachable right now" (retry), which are
refusals no waiting heals (raised at once, translated), and `Outages`, the reconnect policy
one transport's retry loop follows (see `_transport` for the contract). Also the raw reply
helpers: redis-py replies the wire codec decodes itself.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from streaming_rag.exceptions import InvalidRequest, ServerUnavailable
from streaming_rag.wire import redact_url
from streaming_rag.wire.backoff import TRANSIENT_REPLIES, Backoff
from streaming_rag.wire.resp import pack_commands

from ._core import READ_COUNT

__all__ = [
    "DEFAULT_RECONNECT_S",
    "READ_COUNT",
    "RETRYABLE",
    "TRANSIENT_REPLIES",
    "Outages",
    "is_cluster",
    "node_reader",
    "raw_view",
    "raw_xrange",
    "raw_xread",
    "redacted",
    "xread_command",
]

logger = logging.getLogger("streaming_rag.client")

DEFAULT_RECONNECT_S = 30.0
#: Errors that mean "not reachable right now": redis-py's ConnectionError (its BusyLoadingError,
#: a server loading its AOF after a restart, included) and TimeoutError, and the OSErrors
#: (ConnectionResetError, BrokenPipeError, ...) that can escape it on a reset.
RETRYABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.RedisClusterException,  # no node of a cluster answers (not a RedisError)
    OSError,
)
#: The same replies as redis-py raises them (it strips the code from these messages); on a
#: cluster also a slot on the move (ASK, MOVED: a blocking reader on one node reconnects to the
#: slot's new owner) and redis-py's cluster client out of redirects (``TTL exhausted``).
_TRANSIENT_ERRORS = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.AskError,  # MovedError too
    redis.exceptions.ClusterError,
)
#: ConnectionErrors that no waiting heals: raised at once.
_FATAL = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)
#: A first contact failing with these (nothing listens there) is reported at once.
_NEVER_REACHED = (
    redis.exceptions.ConnectionError,
    redis.exceptions.RedisClusterException,
    OSError,
)


#: `url` with every password masked: `streaming_rag.wire.redact_url`, the one implementation.
redacted = redact_url


def _raw(response: Any, **options: Any) -> Any:
    return response


def is_cluster(client: Any) -> bool:
    """Whether `client` is a redis-py Redis Cluster client (sync or asyncio)."""
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def _flat(entries: Any) -> list[Any]:
    return [
        [eid, [x for kv in fields.items() for x in kv] if isinstance(fields, dict) else fields]
        for eid, fields in entries
        if fields is not None
    ]


def raw_xread(reply: Any) -> Any:
    """A cluster client's parsed XREAD reply (redis-py's per-node clients parse every reply)
    in the raw shape the codec reads: ``[[stream, [[id, [field, value, ...]], ...]], ...]``."""
    if isinstance(reply, dict):  # RESP3
        return [[stream, _flat(entries)] for stream, entries in reply.items()]
    return [[stream, _flat(entries)] for stream, entries in reply or ()]


def raw_xrange(reply: Any) -> Any:
    """A cluster client's parsed XRANGE reply as raw entries ``[[id, [field, value]], ...]``."""
    return _flat(reply or ())


def raw_view(client: Any, *, single_connection: bool = False) -> Any:
    """A client on the same connection pool whose XREAD/XRANGE replies skip redis-py's
    parsing (a dict built per entry): the wire codec decodes the raw entries itself. The
    caller's own client object is left untouched. `single_connection`: hold one connection
    of the pool for this view (for a blocking reader). A cluster client is returned as it is
    (its replies go through `raw_xread` / `raw_xrange`)."""
    if is_cluster(client):
        return client
    kind = type(client)
    view = kind(connection_pool=client.connection_pool, single_connection_client=single_connection)
    for command in ("XREAD", "XRANGE"):
        view.set_response_callback(command, _raw)
    return view


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _refusal(url: str, exc: BaseException) -> Exception | None:
    """What a foreign error that waiting cannot heal becomes (None: it passes as it is)."""
    if isinstance(exc, _FATAL):
        return ServerUnavailable(redacted(url), _reason(exc))
    if isinstance(exc, redis.exceptions.InvalidResponse):
        why = f"the server there does not speak the Redis protocol ({_reason(exc)})"
        return ServerUnavailable(redacted(url), why)
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index" in str(exc):
        return InvalidRequest(
            f"the server at {redacted(url)} has no database of the number in the URL ({exc}); "
            "pick one below its `databases` setting (16 by default)"
        )
    return None


def _is_outage(exc: Exception) -> bool:
    """Whether `exc` means "not reachable, not ready, or changing role": retry it."""
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    if isinstance(exc, redis.exceptions.ResponseError):  # redis-py strips known codes only
        return str(exc).startswith(TRANSIENT_REPLIES)
    return isinstance(exc, RETRYABLE) and not isinstance(exc, ServerUnavailable)


class Outages:
    """The reconnect policy of one transport, shared by its twin's retry loop: gives each
    failing call its `Backoff` series and its waits, decides when to give up, and logs each
    outage once."""

    def __init__(self, url: str, reconnect_s: float) -> None:
        self.url = url
        self.reconnect_s = reconnect_s
        self.down_since: float | None = None  # monotonic time of the outage's first failure
        self.ever_up = False  # whether any call has been answered yet

    def failed(self, backoff: Backoff | None, exc: Exception) -> Backoff:
        """A call's attempt raised `exc`: return the call's backoff (made at its first failure)
        when it is an outage (`RETRYABLE`, `TRANSIENT_REPLIES`); else raise what `exc` becomes
        (see the module docstring), or `exc` itself. `ServerUnavailable` once the call has
        been failing for `reconnect_s`."""
        refusal = _refusal(self.url, exc)
        if refusal is not None:
            raise refusal from exc
        if not _is_outage(exc):
            raise exc
        loading = isinstance(exc, redis.exceptions.BusyLoadingError)
        if not self.ever_up and isinstance(exc, _NEVER_REACHED) and not loading:
            # the first contact failed: most likely a wrong URL or a server not started yet,
            # which the caller should hear about now, not after `reconnect_s`
            raise ServerUnavailable(redacted(self.url), _reason(exc)) from exc
        if backoff is None:
            backoff = Backoff(deadline_s=self.reconnect_s)
            if self.down_since is None:
                self.down_since = time.monotonic()
                logger.warning(
                    "Redis at %s is unreachable (%s); retrying for up to %g s",
                    redacted(self.url),
                    _reason(exc),
                    self.reconnect_s,
                )
        if backoff.expired:
            reason = f"unreachable for {backoff.elapsed_s:.1f} s (last error: {_reason(exc)})"
            raise ServerUnavailable(redacted(self.url), reason) from exc
        return backoff

    def wait_s(self, backoff: Backoff) -> float:
        """The wait before the call's next attempt: the series' next delay, cut at the end of
        `reconnect_s` (so the last attempt comes when it ends)."""
        delay = backoff.next_delay()  # starts the series' clock at the first failure
        return max(0.0, min(delay, self.reconnect_s - backoff.elapsed_s))

    def succeeded(self) -> None:
        """A call got its answer: the outage (if any) is over."""
        self.ever_up = True
        if self.down_since is not None:
            down_s = time.monotonic() - self.down_since
            self.down_since = None
            logger.info("Redis at %s is back after %.2f s", redacted(self.url), down_s)


def node_reader(cluster: Any, node: Any) -> redis.asyncio.Redis:
    """A single-connection asyncio client to one node of an asyncio `RedisCluster` (its
    address, credentials and TLS settings), with raw XREAD/XRANGE replies: a fan-out reader
    blocks on it, so CLIENT UNBLOCK (sent to that node) can reach it. Closing it closes its
    connection."""
    kwargs = {k: v for k, v in node.connection_kwargs.items() if k != "response_callbacks"}
    pool = redis.asyncio.ConnectionPool(connection_class=node.connection_class, **kwargs)
    client = redis.asyncio.Redis(connection_pool=pool, single_connection_client=True)
    client.auto_close_connection_pool = True
    for command in ("XREAD", "XRANGE"):
        client.set_response_callback(command, _raw)
    return client


def xread_command(streams: dict[str, str], count: int, block_ms: int) -> bytes:
    """``XREAD COUNT count BLOCK block_ms STREAMS <names> <ids>`` in RESP, packed in one pass
    (redis-py's asyncio packer is pure Python and walks every argument several times: with a
    thousand watched streams that is most of the reader's CPU per call)."""
    args: list[Any] = ["XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", *streams]
    args += streams.values()
    return pack_commands([args])
