"""A statistical CPU profiler for the benchmarks' worker processes (no py-spy here).

`ITIMER_PROF` fires SIGPROF every `interval_s` of the process's CPU time (user + system, not
wall time: a process preempted on a shared machine is not sampled while it waits), and the
handler counts the main thread's stack: the innermost Python function as "own", every
function on the stack once as "cumulative". Time spent inside a C call (a socket send, an
`str.encode`) is counted to the Python function that made the call, because the handler runs
when the call returns. Cost: one stack walk per sample (~1,000 a second).
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any


def frame_name(frame: FrameType) -> str:
    """`function (file.py:first line)` of a frame's code."""
    code = frame.f_code
    return f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"


class StackSampler:
    """Counts stacks on SIGPROF; `start()`, `stop()`, then `dump(path)` (JSON)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.samples = 0
        self.own: Counter[str] = Counter()
        self.cumulative: Counter[str] = Counter()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.samples += 1
        seen: set[str] = set()
        if frame is not None:
            self.own[frame_name(frame)] += 1
        while frame is not None:
            name = frame_name(frame)
            if name not in seen:
                seen.add(name)
                self.cumulative[name] += 1
            frame = frame.f_back

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._on_signal)
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)

    def result(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "interval_s": self.interval_s,
            "own": dict(self.own),
            "cumulative": dict(self.cumulative),
        }

    def dump(self, path: str) -> None:
        Path(path).write_text(json.dumps(self.result()))


def top_costs(
    profile: dict[str, Any], cpu_s: float, tokens: int, top: int = 25, *, by: str = "own"
) -> list[dict[str, Any]]:
    """The `top` functions by `by` ("own" or "cumulative") samples, each as µs of CPU per
    token: the samples' share of `cpu_s` (the process's measured CPU seconds over the same
    span) divided by `tokens`."""
    samples = max(1, int(profile["samples"]))
    per_sample_us = cpu_s / samples / max(1, tokens) * 1e6
    rows = [
        {
            "function": name,
            "own_pct": profile["own"].get(name, 0) / samples * 100,
            "own_us_per_token": profile["own"].get(name, 0) * per_sample_us,
            "cum_us_per_token": cumulative * per_sample_us,
        }
        for name, cumulative in profile["cumulative"].items()
    ]
    rows.sort(key=lambda r: -float(r["own_us_per_token" if by == "own" else "cum_us_per_token"]))
    return rows[:top]
