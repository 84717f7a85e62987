"""Small helpers shared by the ttft, publish, replay and memory benchmarks."""

from __future__ import annotations

import json
from typing import Any

import redis


def drop_prefix(url: str, prefix: str) -> int:
    """Delete every key a benchmark made under `prefix` (job keys and arq's records)."""
    client = redis.Redis.from_url(url)
    dropped = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                gone: Any = client.unlink(*batch)
                dropped += int(gone)
                batch = []
        if batch:
            rest: Any = client.unlink(*batch)
            dropped += int(rest)
    finally:
        client.close()
    return dropped


def entry_ms(entry_id: bytes | str) -> int:
    """The millisecond timestamp of a stream entry id (`<ms>-<seq>`)."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def emit_json(result: dict[str, Any]) -> None:
    print(json.dumps(result))
