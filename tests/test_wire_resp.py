"""`pack_commands` writes exactly what redis-py's own packer writes, and refuses what it refuses.
Pure: no server."""

from __future__ import annotations

import pytest
import redis.asyncio.connection

from streaming_rag.wire.resp import pack_commands
from streaming_rag_client._outages import xread_command

COMMANDS = [
    ["EVALSHA", "a" * 40, 3, "k:{b01.9}:j:events", "k:{b01.9}:j:job", "k:{b01.9}:j:lease"],
    ["XADD", "s", "1-1", "e", b"\x92\x02\xa5chunk\x00\xff", 0, -7, 2.5, 1e-05, "é"],
    ["WAIT", 1, 100],
    ["PING"],
]


def _redis_py(commands: list[list[object]]) -> bytes:
    conn = redis.asyncio.connection.Connection()
    return b"".join(b"".join(conn.pack_command(*args)) for args in commands)


def test_the_same_bytes_as_redis_py() -> None:
    assert pack_commands(COMMANDS) == _redis_py(COMMANDS)
    for command in COMMANDS:
        assert pack_commands([command]) == _redis_py([command])


def test_xread_command_is_the_xread_redis_py_would_send() -> None:
    streams = {"p:{b00.63}:a:events": "0-0", "p:{b00.63}:b:events": "1796-3"}
    expected = _redis_py(
        [["XREAD", "COUNT", 1000, "BLOCK", 500, "STREAMS", *streams, *streams.values()]]
    )
    assert xread_command(streams, 1000, 500) == expected


@pytest.mark.parametrize("bad", [True, None, object(), [1]])
def test_what_redis_cannot_carry_is_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        pack_commands([["SET", "k", bad]])
