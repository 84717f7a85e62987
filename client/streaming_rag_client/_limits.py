"""What `POST /answers` accepts before anything is queued: the content type, the body's size
(refused before it is buffered), the JSON's shape and depth, and a per-client submit rate.

Refusals are Starlette `HTTPException`s (the bridge answers them as `{"detail": ...}`):
415 a body that is not `application/json`, 413 one over `max_body_bytes` (by its
`Content-Length`, or counted as it streams in), 429 with `Retry-After` past the submit rate.
A body that is not a JSON object of `query` and optional `context`, or that nests deeper than
`MAX_JSON_DEPTH` or holds more than `MAX_JSON_VALUES` values, is `InvalidRequest` (422).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from streaming_rag.exceptions import InvalidRequest

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_VALUES",
    "RateLimit",
    "json_body",
]

#: The largest `POST /answers` body read (a 32,000-character query fits many times over).
MAX_BODY_BYTES = 1 << 20
#: The deepest nesting of arrays and objects a body may have (the object itself is depth 1).
MAX_JSON_DEPTH = 32
#: The most JSON values (strings, numbers, arrays, objects, ...) a body may hold.
MAX_JSON_VALUES = 100_000


def _check_content_type(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise HTTPException(
            415,
            "POST /answers needs Content-Type: application/json"
            + (f", got {media[:80]!r}" if media else ""),
        )


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body is over {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes: from its
    `Content-Length` before reading, else while counting the chunks as they arrive."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _check_shape(data: Any) -> None:
    """Refuse JSON nested deeper than `MAX_JSON_DEPTH` or with over `MAX_JSON_VALUES` values
    (iteratively: no recursion however deep the input)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    values = 0
    while stack:
        value, depth = stack.pop()
        values += 1
        if values > MAX_JSON_VALUES:
            raise InvalidRequest(f"request body holds over {MAX_JSON_VALUES} JSON values")
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise InvalidRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


async def json_body(request: Request, *, max_body_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The body of a `POST /answers` as a JSON object of `query` and optional `context`;
    raises `HTTPException` 415 or 413, or `InvalidRequest` saying what is wrong with it."""
    _check_content_type(request)
    body = await _read_body(request, max_body_bytes)
    try:
        data = json.loads(body)
    except RecursionError:  # nested far deeper than MAX_JSON_DEPTH
        raise InvalidRequest(f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidRequest(f"request body must be JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            'request body must be a JSON object like {"query": "...", "context": {...}}, '
            f"got {type(data).__name__}"
        )
    _check_shape(data)
    unknown = sorted(set(data) - {"query", "context"})
    if unknown:
        raise InvalidRequest(f"unknown fields {unknown}: expected query and optional context")
    return data


class RateLimit:
    """A token bucket per client address: `n` submits, refilled evenly over `per_s` seconds.
    In memory, per process; buckets that have refilled are dropped, so memory stays bounded
    by the clients active within `per_s`."""

    def __init__(self, n: int, per_s: float) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRequest(f"submit_rate needs n >= 1 submits, got {n!r}")
        if not per_s > 0:
            raise InvalidRequest(f"submit_rate needs per_s > 0 seconds, got {per_s!r}")
        self.n = n
        self.per_s = float(per_s)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def _prune(self, now: float) -> None:
        rate = self.n / self.per_s
        full = [
            k for k, (tokens, at) in self._buckets.items() if tokens + (now - at) * rate >= self.n
        ]
        for key in full:
            del self._buckets[key]

    def take(self, key: str, *, now: float | None = None) -> None:
        """Spend one submit for `key`; raise `HTTPException` 429 with `Retry-After` (whole
        seconds until the next submit is allowed) when none is left."""
        now = time.monotonic() if now is None else now
        if len(self._buckets) >= 4096:
            self._prune(now)
        rate = self.n / self.per_s
        tokens, at = self._buckets.get(key, (float(self.n), now))
        tokens = min(float(self.n), tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait_s = max(1, math.ceil((1.0 - tokens) / rate))
            raise HTTPException(
                429,
                f"too many submits: at most {self.n} per {self.per_s:g} s from one client",
                headers={"Retry-After": str(wait_s)},
            )
        self._buckets[key] = (tokens - 1.0, now)
