"""How the worker tells an outage from a real error, and how it reports one: once when the
server is lost, once when it is back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from streaming_rag.wire.backoff import TRANSIENT_REPLIES, Backoff

from . import metrics

__all__ = ["TRANSIENT_REPLIES", "Backoff", "OutageLog", "is_transient", "retrying"]

_T = TypeVar("_T")

_TRANSIENT = (
    RedisConnectionError,  # also AuthenticationError, which is_transient sets apart
    RedisTimeoutError,
    BusyLoadingError,  # a restarted server loading its data
    ReadOnlyError,  # a demoted primary: Sentinel's pools reconnect to the new one
    TryAgainError,
    ClusterDownError,  # a cluster whose slot has no primary for now (a failover under way)
    ClusterError,  # redis-py's cluster client out of redirects or retries (a resharding)
    RedisClusterException,  # no cluster node reachable (yet): an outage of the events server
    ConnectionError,
    TimeoutError,
    OSError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` means "the server is unreachable, not ready, or changing role" (retry
    later), as opposed to a refusal that retrying cannot fix (a wrong password, a script
    error). A blocked command of a primary that became a replica is answered ``UNBLOCKED``."""
    from redis.exceptions import AuthenticationError, AuthorizationError, ResponseError

    if isinstance(exc, AuthenticationError | AuthorizationError):
        return False
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)


class OutageLog:
    """Logs the start of an outage once (WARNING) and its end once (INFO, with its length)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger = logger
        self._what = what
        self._since: float | None = None

    @property
    def down_s(self) -> float | None:
        """Seconds since the outage began, or None while the server answers."""
        return None if self._since is None else time.monotonic() - self._since

    def down(self, exc: BaseException, retry_in_s: float) -> None:
        if self._since is None:
            self._since = time.monotonic()
            self._logger.warning(
                "%s: Redis unavailable (%s); retrying every %.2g s or less until it is back",
                self._what,
                str(exc) or type(exc).__name__,
                max(retry_in_s, 1.0),
            )

    def up(self) -> None:
        if self._since is not None:
            self._logger.info(
                "%s: Redis is back after %.1f s", self._what, time.monotonic() - self._since
            )
            self._since = None
            metrics.current().reconnected(self._what)


async def retrying(op: Callable[[], Awaitable[_T]], *, deadline_s: float) -> _T:
    """`await op()`, tried again after each transient error (`is_transient`) with the shared
    `Backoff`, until it answers or has failed for `deadline_s`; then the last error. Only for
    idempotent operations."""
    backoff = Backoff(deadline_s=deadline_s)
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc) or backoff.expired:
                raise
            await asyncio.sleep(backoff.next_delay())  # a policy's wait
