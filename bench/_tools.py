"""Small helpers shared by the benchmarks: key clean-up, verdicts, JSON output, and the
scorecard rows that `python -m bench all` prints at the end."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
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


#: `python -m bench all` names a file here; each benchmark appends its scorecard rows to it.
SCORECARD_ENV = "STREAMING_RAG_BENCH_SCORECARD"


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """`median [min-max]` of `values` (one value: just it), formatted with `fmt`."""
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def scorecard(figure: str, measured: str, against: str, target: str, ok: bool | None) -> None:
    """Record one row of the performance issue's scorecard: the figure, what was measured
    (median [spread]), its baseline or peer measured in the same run, the target, and the
    verdict (None: no verdict, context only). Written only under `python -m bench all`."""
    path = os.environ.get(SCORECARD_ENV)
    if not path:
        return
    row = {
        "figure": figure,
        "measured": measured,
        "against": against,
        "target": target,
        "verdict": "-" if ok is None else verdict(ok),
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(row) + "\n")


def read_scorecard(path: str) -> list[dict[str, str]]:
    """The rows `scorecard` wrote to `path` (none if it is missing)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def print_scorecard(rows: list[dict[str, str]]) -> None:
    """The scorecard as one table: figure, measured, baseline/peer, target, verdict."""
    if not rows:
        return
    print("scorecard (medians [min-max] over each benchmark's alternating runs):")
    widths = [max(len(r[k]) for r in rows) for k in ("figure", "measured", "against", "target")]
    head = ("figure", "measured", "baseline / peer", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  verdict")
    for r in rows:
        cells = (r["figure"], r["measured"], r["against"], r["target"])
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
        print(line + "  " + r["verdict"])
