"""`DirectConnection`: one connection of a redis-py pool, driven without redis-py's per-command
machinery, for the publisher's hot path.

A paced LLM makes the publisher send one small script call per token. Through `Redis.evalsha`
(or a pipeline) each call also pays the pool's lock, the retry wrapper, the health check and
the response-callback lookup: measured here, ~100 µs of client CPU per call on top of the
~100 µs the round trip itself costs. This holds one connection of the client's own pool (so
its URL, credentials, TLS, timeouts and Sentinel resolution are the client's) and writes the
commands, packed in one pass (`streaming_rag.wire.resp`), and reads the replies directly.

Contract: `call` sends its commands in one write and returns their replies in order; an
error reply (`ResponseError`, e.g. NOSCRIPT) is returned in its command's place, as a
pipeline with ``raise_on_error=False`` does. Any other failure (the connection dropped, a
timeout, a cancellation, a Sentinel-managed connection finding its master demoted) closes
the connection and propagates: the caller retries, and the next call connects again. One
task at a time may use it (the publisher's flusher).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from streaming_rag.wire.resp import pack_commands

__all__ = ["DirectConnection"]


class DirectConnection:
    """One connection of `pool` (a redis-py asyncio `ConnectionPool`), held until `aclose()`."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: Any = None

    async def call(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of `commands`, sent in one write (see the module docstring)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = await self._pool.get_connection()
        try:
            await conn.send_packed_command(pack_commands(commands), check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            self._conn = None  # its state is unknown: never reuse it
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
            raise

    async def aclose(self) -> None:
        """Give the connection back to its pool."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
