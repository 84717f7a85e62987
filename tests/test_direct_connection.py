"""`DirectConnection` (the publisher's hot path): replies in order, error replies in place, and a
cut connection raises once and is replaced, on a real server through a real TCP proxy."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest
import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from streaming_rag_worker.direct import DirectConnection
from tests.faults import TcpProxy

WAIT_S = 10.0


async def test_replies_come_in_order_with_error_replies_in_place(redis_url, key_prefix):
    client = redis.asyncio.Redis.from_url(redis_url)
    direct = DirectConnection(client.connection_pool)
    try:
        key = f"{key_prefix}:direct"
        replies = await asyncio.wait_for(
            direct.call(
                [
                    ["SET", key, "1"],
                    ["EVALSHA", "0" * 40, 0],
                    ["INCR", key],
                    ["HGET", key, "f"],  # WRONGTYPE
                    ["GET", key],
                ]
            ),
            WAIT_S,
        )
        assert replies[0] == b"OK"
        assert isinstance(replies[1], NoScriptError)
        assert replies[2] == 2
        assert isinstance(replies[3], ResponseError) and "WRONGTYPE" in str(replies[3])
        assert replies[4] == b"2"
    finally:
        await direct.aclose()
        await client.delete(f"{key_prefix}:direct")
        await client.aclose()


async def test_a_cut_connection_raises_once_then_the_next_call_reconnects(redis_url, key_prefix):
    url = urlsplit(redis_url)
    if url.scheme != "redis" or url.port is None or url.password or url.username:
        pytest.skip(f"needs a plain redis://host:port server to proxy, not {url.scheme}://")
    with TcpProxy(url.port, target_host=url.hostname or "127.0.0.1") as proxy:
        client = redis.asyncio.Redis.from_url(proxy.url(db=int(url.path.strip("/") or 0)))
        direct = DirectConnection(client.connection_pool)
        try:
            assert await asyncio.wait_for(direct.call([["PING"]]), WAIT_S) == [b"PONG"]
            assert proxy.cut() >= 1
            with pytest.raises((RedisConnectionError, ConnectionError, OSError)):
                await asyncio.wait_for(direct.call([["PING"]]), WAIT_S)
            assert await asyncio.wait_for(direct.call([["PING"]]), WAIT_S) == [b"PONG"]
            assert proxy.accepted == 2
        finally:
            await direct.aclose()
            await client.aclose()


async def test_a_cancelled_call_never_leaves_a_reply_for_the_next_one(redis_url, key_prefix):
    client = redis.asyncio.Redis.from_url(redis_url)
    direct = DirectConnection(client.connection_pool)
    key = f"{key_prefix}:blocked"
    try:
        blocked = asyncio.ensure_future(direct.call([["BLPOP", key, 5]]))
        async with asyncio.timeout(WAIT_S):  # until the server holds the BLPOP
            while not any(c.get("cmd") == "blpop" for c in await client.client_list()):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await client.rpush(key, "late")  # would be the BLPOP's reply on a reused connection
        replies = await asyncio.wait_for(direct.call([["ECHO", "next"]]), WAIT_S)
        assert replies == [b"next"]
    finally:
        await direct.aclose()
        await client.delete(key)
        await client.aclose()
