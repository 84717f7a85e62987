"""The two thin I/O twins: the same operations on redis-py's sync and asyncio clients.

Each method is one round trip (or one blocking read). Redis connection errors are translated
into `ServerUnavailable` naming the URL at this boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import redis
import redis.asyncio

from streaming_rag.exceptions import ServerUnavailable
from streaming_rag.wire import JobKeys
from streaming_rag.wire.scripts import CANCEL, CHECK, SUBMIT, cancel_call, check_call

from ._core import SubmitPlan, text

__all__ = ["AsyncTransport", "SyncTransport", "raw_view", "redacted"]

READ_COUNT = 1000
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def redacted(url: str) -> str:
    """`url` with any password replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"


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


@contextlib.contextmanager
def _translated(url: str) -> Iterator[None]:
    try:
        yield
    except _REDIS_DOWN as exc:
        raise ServerUnavailable(redacted(url), str(exc) or type(exc).__name__) from exc


@contextlib.asynccontextmanager
async def _atranslated(url: str) -> AsyncIterator[None]:
    try:
        yield
    except _REDIS_DOWN as exc:
        raise ServerUnavailable(redacted(url), str(exc) or type(exc).__name__) from exc


class SyncTransport:
    """Job operations on a `redis.Redis`."""

    def __init__(self, client: redis.Redis, url: str, retention_ms: int) -> None:
        self.client = client
        self.raw = raw_view(client)
        self.url = url
        self.retention_ms = retention_ms
        self._submit = client.register_script(SUBMIT)
        self._check = client.register_script(CHECK)
        self._cancel = client.register_script(CANCEL)

    def submit(self, plan: SubmitPlan) -> bool:
        with _translated(self.url):
            return bool(self._submit(keys=plan.call.keys, args=plan.call.args))

    def read(self, keys: JobKeys, cursor: str, block_ms: int | None) -> Any:
        """Raw XREAD reply (see `raw_view`)."""
        with _translated(self.url):
            return self.raw.xread({keys.events: cursor}, count=READ_COUNT, block=block_ms)

    def check(self, keys: JobKeys) -> str:
        call = check_call(keys, retention_ms=self.retention_ms)
        with _translated(self.url):
            return text(self._check(keys=call.keys, args=call.args))

    def cancel(self, keys: JobKeys) -> str:
        call = cancel_call(keys, retention_ms=self.retention_ms)
        with _translated(self.url):
            return text(self._cancel(keys=call.keys, args=call.args))

    def close(self) -> None:
        self.client.close()


class AsyncTransport:
    """Job operations on a `redis.asyncio.Redis`."""

    def __init__(self, client: redis.asyncio.Redis, url: str, retention_ms: int) -> None:
        self.client = client
        self.raw = raw_view(client)
        self.url = url
        self.retention_ms = retention_ms
        self._submit = client.register_script(SUBMIT)
        self._check = client.register_script(CHECK)
        self._cancel = client.register_script(CANCEL)

    async def submit(self, plan: SubmitPlan) -> bool:
        async with _atranslated(self.url):
            return bool(await self._submit(keys=plan.call.keys, args=plan.call.args))

    async def read(self, keys: JobKeys, cursor: str, block_ms: int | None) -> Any:
        """Raw XREAD reply (see `raw_view`)."""
        async with _atranslated(self.url):
            return await self.raw.xread({keys.events: cursor}, count=READ_COUNT, block=block_ms)

    async def range_after(self, keys: JobKeys, after: str, last: str) -> Any:
        """Raw XRANGE entries in (after, last]."""
        async with _atranslated(self.url):
            return await self.raw.xrange(keys.events, f"({after}", last)

    async def check(self, keys: JobKeys) -> str:
        call = check_call(keys, retention_ms=self.retention_ms)
        async with _atranslated(self.url):
            return text(await self._check(keys=call.keys, args=call.args))

    async def check_many(self, many: list[JobKeys]) -> list[str]:
        """CHECK for several jobs in one round trip."""
        async with _atranslated(self.url), self.client.pipeline(transaction=False) as pipe:
            for keys in many:
                call = check_call(keys, retention_ms=self.retention_ms)
                await self._check(keys=call.keys, args=call.args, client=pipe)
            return [text(v) for v in await pipe.execute()]

    async def cancel(self, keys: JobKeys) -> str:
        call = cancel_call(keys, retention_ms=self.retention_ms)
        async with _atranslated(self.url):
            return text(await self._cancel(keys=call.keys, args=call.args))

    async def aclose(self) -> None:
        await self.client.aclose()
