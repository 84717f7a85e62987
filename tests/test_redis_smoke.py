"""Smoke tests of the real-server fixtures in conftest.py: a true round trip, the right mode."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio

_written_prefixes: list[str] = []


def _assert_real_server(info: dict[str, object]) -> None:
    assert "redis_version" in info or "valkey_version" in info, info


def test_stream_round_trip_sync(redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:events"
    first = redis_client.xadd(key, {"type": "chunk", "data": "Hello"})
    second = redis_client.xadd(key, {"type": "chunk", "data": " world"})
    entries = redis_client.xrange(key)
    assert [entry_id for entry_id, _ in entries] == [first, second]
    assert [fields[b"data"] for _, fields in entries] == [b"Hello", b" world"]
    _assert_real_server(redis_client.info("server"))
    _written_prefixes.append(key_prefix)


async def test_stream_round_trip_async(aredis_client: redis.asyncio.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:events"
    entry_id = await aredis_client.xadd(key, {"type": "generation_done", "n": 1})
    entries = await aredis_client.xrange(key, "-", "+")
    assert entries == [(entry_id, {b"type": b"generation_done", b"n": b"1"})]
    assert await aredis_client.xlen(key) == 1
    _assert_real_server(await aredis_client.info("server"))


def test_key_prefix_is_unique_and_scoped(key_prefix: str, redis_client: redis.Redis) -> None:
    assert key_prefix.startswith("srag-test-")
    assert len(key_prefix) == len("srag-test-") + 8
    assert key_prefix not in _written_prefixes


def test_keys_of_earlier_test_were_deleted(redis_client: redis.Redis) -> None:
    # Relies on file order: test_stream_round_trip_sync ran earlier in this session.
    if not _written_prefixes:
        pytest.skip("test_stream_round_trip_sync did not run in this session")
    leftovers = list(redis_client.scan_iter(match=f"{_written_prefixes[0]}*"))
    assert leftovers == []


def test_fixture_honours_redis_url(redis_url: str, redis_client: redis.Redis) -> None:
    info = redis_client.info("server")
    env_url = os.environ.get("REDIS_URL")
    if env_url:
        assert redis_url == env_url
    else:
        parts = urlsplit(redis_url)
        assert parts.scheme == "redis"
        assert parts.hostname == "127.0.0.1"
        assert parts.port is not None and parts.port != 6379
        assert info.get("server_name") == "valkey"
        assert "valkey_version" in info
        persistence = redis_client.config_get("save") | redis_client.config_get("appendonly")
        assert persistence == {"save": "", "appendonly": "no"}
        assert redis_client.config_get("bind")["bind"].split() == ["127.0.0.1"]
    _assert_real_server(info)
    assert redis_client.ping() is True
