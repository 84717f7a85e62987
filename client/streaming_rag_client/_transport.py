"""The two thin I/O twins: the same operations on redis-py's sync and asyncio clients.

Each method is one round trip (or one blocking read), ridden through Redis outages: on a
connection error (refused, reset, timed out, or a restarted server still loading its data:
`RETRYABLE`), or an error reply a server gives while it changes role (`TRANSIENT_REPLIES`, e.g.
``UNBLOCKED`` for a blocked read of a primary being demoted), the call is tried again,
waiting as `streaming_rag.wire.backoff.Backoff` says (the one retry policy of worker and
client: 50 ms doubling to 1 s, ±20 % jitter), for up to `reconnect_s` seconds from its first
failure; then it raises `ServerUnavailable` naming the URL
(password masked) and how long it was unreachable. Raised at once instead: authentication
errors (`ServerUnavailable`), a server that does not speak the protocol (`ServerUnavailable`),
a database number the server does not have (`InvalidRequest`); any other error reply as is.
Each transport logs an outage once at WARNING when it starts and once at INFO when a call
succeeds again (logger ``streaming_rag.client``).

Every operation here may be retried blindly: reads and CHECK are idempotent, CANCEL reports
whether a retry found the job cancelled (an earlier attempt did it), and SUBMIT carries a
per-submit nonce, so a retry after a lost reply answers 1 again instead of running twice or
reporting a duplicate. (Without the nonce only failures before the command was sent would be
safe to retry, and redis-py cannot tell those apart reliably: a single-connection client
connects inside `send_packed_command`, and a pooled connection the server has just closed
fails only on the read after the write.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis
import redis.asyncio

from streaming_rag.exceptions import InvalidRequest, ServerUnavailable
from streaming_rag.wire import JobKeys, redact_url
from streaming_rag.wire.backoff import TRANSIENT_REPLIES, Backoff
from streaming_rag.wire.scripts import CANCEL, CHECK, SUBMIT, cancel_call, check_call

from ._core import SubmitPlan, text

__all__ = [
    "RETRYABLE",
    "TRANSIENT_REPLIES",
    "AsyncTransport",
    "SyncTransport",
    "raw_view",
    "redacted",
]

logger = logging.getLogger("streaming_rag.client")

READ_COUNT = 1000
DEFAULT_RECONNECT_S = 30.0
#: Errors that mean "not reachable right now": redis-py's ConnectionError (its BusyLoadingError,
#: a server loading its AOF after a restart, included) and TimeoutError, and the OSErrors
#: (ConnectionResetError, BrokenPipeError, ...) that can escape it on a reset.
RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
#: The same replies as redis-py raises them (it strips the code from these messages).
_TRANSIENT_ERRORS = (
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)
#: ConnectionErrors that no waiting heals: raised at once.
_FATAL = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)
#: A first contact failing with these (nothing listens there) is reported at once.
_NEVER_REACHED = (redis.exceptions.ConnectionError, OSError)
_T = TypeVar("_T")


#: `url` with every password masked: `streaming_rag.wire.redact_url`, the one implementation.
redacted = redact_url


def _raw(response: Any, **options: Any) -> Any:
    return response


def raw_view(client: Any, *, single_connection: bool = False) -> Any:
    """A client on the same connection pool whose XREAD/XRANGE replies skip redis-py's
    parsing (a dict built per entry): the wire codec decodes the raw entries itself. The
    caller's own client object is left untouched. `single_connection`: hold one connection
    of the pool for this view (for a blocking reader)."""
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


class _Outages:
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


class SyncTransport:
    """Job operations on a `redis.Redis`, each retried through outages of up to
    `reconnect_s` seconds (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        url: str,
        retention_ms: int,
        *,
        reconnect_s: float = DEFAULT_RECONNECT_S,
    ) -> None:
        self.client = client
        self.raw = raw_view(client)
        self.url = url
        self.retention_ms = retention_ms
        self.outages = _Outages(url, reconnect_s)
        self._submit = client.register_script(SUBMIT)
        self._check = client.register_script(CHECK)
        self._cancel = client.register_script(CANCEL)

    def call(self, op: Callable[[], _T]) -> _T:
        """`op()`, tried again after each outage error (`_Outages.failed`; waiting as `Backoff`
        says) until it answers or has failed for `reconnect_s`; then `ServerUnavailable`."""
        backoff: Backoff | None = None
        while True:
            try:
                result = op()
            except (redis.exceptions.RedisError, OSError) as exc:
                backoff = self.outages.failed(backoff, exc)
                time.sleep(self.outages.wait_s(backoff))  # a policy's wait, not a synchronisation
                continue
            self.outages.succeeded()
            return result

    def submit(self, plan: SubmitPlan) -> bool:
        """SUBMIT (idempotent per plan: a retry after a lost reply answers True again)."""
        return bool(self.call(lambda: self._submit(keys=plan.call.keys, args=plan.call.args)))

    def read(self, keys: JobKeys, cursor: str, block_ms: int | None) -> Any:
        """Raw XREAD reply (see `raw_view`)."""
        return self.call(
            lambda: self.raw.xread({keys.events: cursor}, count=READ_COUNT, block=block_ms)
        )

    def check(self, keys: JobKeys) -> str:
        call = check_call(keys, retention_ms=self.retention_ms)
        return text(self.call(lambda: self._check(keys=call.keys, args=call.args)))

    def cancel(self, keys: JobKeys) -> tuple[str, bool]:
        """The CANCEL verdict, and whether it took more than one attempt."""
        call = cancel_call(keys, retention_ms=self.retention_ms)
        attempts = 0

        def once() -> Any:
            nonlocal attempts
            attempts += 1
            return self._cancel(keys=call.keys, args=call.args)

        return text(self.call(once)), attempts > 1

    def close(self) -> None:
        self.client.close()


class AsyncTransport:
    """Job operations on a `redis.asyncio.Redis`, each retried through outages of up to
    `reconnect_s` seconds (see the module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        url: str,
        retention_ms: int,
        *,
        reconnect_s: float = DEFAULT_RECONNECT_S,
    ) -> None:
        self.client = client
        self.raw = raw_view(client)
        self.url = url
        self.retention_ms = retention_ms
        self.outages = _Outages(url, reconnect_s)
        self._submit = client.register_script(SUBMIT)
        self._check = client.register_script(CHECK)
        self._cancel = client.register_script(CANCEL)

    async def call(self, op: Callable[[], Awaitable[_T]]) -> _T:
        """`await op()`, tried again after each outage error (`_Outages.failed`; waiting as
        `Backoff` says) until it answers or has failed for `reconnect_s`; then
        `ServerUnavailable`. The fan-out reader runs its own XREAD through it too."""
        backoff: Backoff | None = None
        while True:
            try:
                result = await op()
            except (redis.exceptions.RedisError, OSError) as exc:
                backoff = self.outages.failed(backoff, exc)
                await asyncio.sleep(self.outages.wait_s(backoff))  # a policy's wait
                continue
            self.outages.succeeded()
            return result

    async def submit(self, plan: SubmitPlan) -> bool:
        """SUBMIT (idempotent per plan: a retry after a lost reply answers True again)."""
        return bool(await self.call(lambda: self._submit(keys=plan.call.keys, args=plan.call.args)))

    async def read(self, keys: JobKeys, cursor: str, block_ms: int | None) -> Any:
        """Raw XREAD reply (see `raw_view`)."""
        return await self.call(
            lambda: self.raw.xread({keys.events: cursor}, count=READ_COUNT, block=block_ms)
        )

    async def range_after(self, keys: JobKeys, after: str, last: str) -> Any:
        """Raw XRANGE entries in (after, last]."""
        return await self.call(lambda: self.raw.xrange(keys.events, f"({after}", last))

    async def check(self, keys: JobKeys) -> str:
        call = check_call(keys, retention_ms=self.retention_ms)
        return text(await self.call(lambda: self._check(keys=call.keys, args=call.args)))

    async def check_many(self, many: list[JobKeys]) -> list[str]:
        """CHECK for several jobs in one round trip."""

        async def once() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for keys in many:
                    call = check_call(keys, retention_ms=self.retention_ms)
                    await self._check(keys=call.keys, args=call.args, client=pipe)
                return list(await pipe.execute())

        return [text(v) for v in await self.call(once)]

    async def cancel(self, keys: JobKeys) -> tuple[str, bool]:
        """The CANCEL verdict, and whether it took more than one attempt."""
        call = cancel_call(keys, retention_ms=self.retention_ms)
        attempts = 0

        async def once() -> Any:
            nonlocal attempts
            attempts += 1
            return await self._cancel(keys=call.keys, args=call.args)

        return text(await self.call(once)), attempts > 1

    async def aclose(self) -> None:
        await self.client.aclose()
