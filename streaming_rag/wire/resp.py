"""`pack_commands`: Redis commands in RESP, packed in one pass, for the hot paths that write
their own connection (the worker's publisher, the client's fan-out reader).

redis-py's asyncio connection packs in pure Python and walks every argument several times
(measured: ~5 µs per published token at 1,000 answers, the largest single cost of the
worker's flush); this writes each argument once. Arguments are `bytes`, `str` (UTF-8), `int`
or `float` (as redis-py encodes them: ``repr``); anything else (a bool, None) is refused with
`TypeError`, as redis-py refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["pack_commands"]


def _arg(value: Any) -> bytes:
    kind = type(value)
    if kind is bytes:
        return value  # type: ignore[no-any-return]
    if kind is str:
        return value.encode()  # type: ignore[no-any-return]
    if kind is int:
        return b"%d" % value
    if kind is float:
        return repr(value).encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"cannot send a {kind.__name__} to Redis: use bytes, str, int or float")


def pack_commands(commands: Iterable[Sequence[Any]]) -> bytes:
    """Every command of `commands` (each a sequence of arguments, the name first) in RESP."""
    out: list[bytes] = []
    append = out.append
    for args in commands:
        append(b"*%d\r\n" % len(args))
        for value in args:
            data = _arg(value)
            append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
