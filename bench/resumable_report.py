"""`python -m bench resumable`'s summary (medians [min-max] over runs), targets and table."""

from __future__ import annotations

import statistics
from typing import Any

from ._tools import scorecard, verdict

SYSTEMS = ("ours", "theirs")
FLAT_WITHIN = 0.10
TOP_LEVEL = 100


def spread(values: list[float]) -> dict[str, float] | None:
    """Median, min and max of `values`; None when there are none."""
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _level(got: list[dict[str, Any]]) -> dict[str, Any]:
    lagged = [g["lag_ms"] for g in got if g.get("lag_ms")]
    out: dict[str, Any] = {
        "runs": len(got),
        "cpu_us_per_token": spread([g["cpu_us_per_token"] for g in got]),
        "lag_p50_ms": spread([lag["p50"] for lag in lagged]),
        "lag_p99_ms": spread([lag["p99"] for lag in lagged]),
        "complete": all(g.get("complete", True) for g in got),
    }
    own = "self_reported_cpu_us_per_token"
    if any(own in g for g in got):
        out[own] = spread([g[own] for g in got if own in g])
    return out


def _late(got: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(got),
        "got": sorted({g["got"] for g in got}),
        "whole_answer": bool(got) and all(g["whole_answer"] for g in got),
        "tokens": spread([float(g["tokens"]) for g in got]),
        "ms": spread([g["ms"] for g in got]),
    }


def _killed(got: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "runs": len(got),
        "ends": sorted({g["end"] for g in got}),
        "ended": bool(got) and all(g["ended"] for g in got),
        "tokens": spread([float(g["tokens"]) for g in got]),
        "of": got[0]["of"] if got else None,
        "s_after_kill": spread([g["s_after_kill"] for g in got]),
    }


def _cpu(rows: list[dict[str, Any]], system: str, pace: float, readers: int) -> float | None:
    for row in rows:
        if row["pace_ms"] == pace and row["readers"] == readers:
            cpu = row[system]["cpu_us_per_token"]
            return None if cpu is None else float(cpu["median"])
    return None


def growth(rows: list[dict[str, Any]], system: str, pace: float) -> float | None:
    """CPU per token at `TOP_LEVEL` readers over that at 0 readers, minus 1 (None: unmeasured)."""
    low, high = _cpu(rows, system, pace, 0), _cpu(rows, system, pace, TOP_LEVEL)
    return None if low is None or high is None or not low else high / low - 1


def targets(rows: list[dict[str, Any]], paced: float) -> list[dict[str, Any]]:
    """The issue's two rows: ours ≤ theirs paced at 0 readers; ours flat 0 → 100 readers."""
    ours, theirs = _cpu(rows, "ours", paced, 0), _cpu(rows, "theirs", paced, 0)
    first = None if ours is None or theirs is None else ours <= theirs
    flat = growth(rows, "ours", paced)
    second = None if flat is None else abs(flat) <= FLAT_WITHIN
    return [
        {
            "target": f"worker CPU per token, {paced:g} ms pace, 0 readers: <= resumable-stream's",
            "ours": ours,
            "theirs": theirs,
            "verdict": None if first is None else verdict(first),
        },
        {
            "target": f"producer CPU per token, {paced:g} ms pace: {TOP_LEVEL} readers within "
            f"{FLAT_WITHIN:.0%} of 0 (ours)",
            "ours_growth": flat,
            "theirs_growth": growth(rows, "theirs", paced),
            "verdict": None if second is None else verdict(second),
        },
    ]


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """The JSON result: per-configuration summaries, late join, kill, targets (no raw lags)."""
    samples = raw["samples"]
    paces = (0.0, raw["interval_ms"])
    rows = []
    for pace in paces:
        for n in raw["levels"]:
            row: dict[str, Any] = {"pace_ms": pace, "readers": n}
            for system in SYSTEMS:
                row[system] = _level(samples["levels"][f"{pace:g}/{n}/{system}"])
            rows.append(row)
    result = {key: raw[key] for key in ("server", "tokens", "interval_ms", "runs", "levels")}
    return {
        **result,
        "versions": raw["versions"],
        "errors": raw["errors"],
        "rows": rows,
        "late_join": {s: _late(samples["late"][s]) for s in SYSTEMS},
        "killed": {s: _killed(samples["killed"][s]) for s in SYSTEMS},
        "targets": targets(rows, raw["interval_ms"]),
    }


def cell(value: dict[str, float] | None, digits: int = 1) -> str:
    """`12.3 [11.0-14.2]`, or `-` for nothing measured."""
    if value is None:
        return "-"
    return f"{value['median']:.{digits}f} [{value['min']:.{digits}f}-{value['max']:.{digits}f}]"


def _lag(entry: dict[str, Any]) -> str:
    if entry["lag_p50_ms"] is None:
        return "-"
    p50, p99 = entry["lag_p50_ms"]["median"], entry["lag_p99_ms"]["median"]
    return f"{p50:.2f} / {p99:.2f}{'' if entry['complete'] else ' INCOMPLETE'}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"


def format_table(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [
        f"resumable: ours (streaming-rag worker) vs resumable-stream {v['resumable-stream']} "
        f"(redis {v['redis']}, node {v['node']}); {result['tokens']} tokens per answer, "
        f"{result['runs']} alternating run(s), {result['server']}",
        "producer CPU per token (µs, /proc schedstat): median [min-max] over runs; lag at the "
        "readers (ms): median over runs of each run's p50 / p99 (without pacing the lag is mostly "
        "backlog, not latency)",
        f"{'pace':<7}{'readers':>7}  {'ours CPU µs/tok':<25}{'theirs CPU µs/tok':<25}"
        f"{'ours lag p50/p99':<20}{'theirs lag p50/p99'}",
    ]
    for row in result["rows"]:
        pace = "fast" if not row["pace_ms"] else f"{row['pace_ms']:g} ms"
        ours, theirs = row["ours"], row["theirs"]
        lines.append(
            f"{pace:<7}{row['readers']:>7}  {cell(ours['cpu_us_per_token']):<25}"
            f"{cell(theirs['cpu_us_per_token']):<25}{_lag(ours):<20}{_lag(theirs)}"
        )
    late = result["late_join"]
    lines.append(f"late join after the answer finished ({result['tokens']} tokens):")
    for system in SYSTEMS:
        got = late[system]
        whole = "whole answer" if got["whole_answer"] else "NOT the whole answer"
        lines.append(
            f"  {system:<7}{whole}: {', '.join(got['got']) or '-'}, "
            f"{cell(got['tokens'], 0)} tokens in {cell(got['ms'], 2)} ms"
        )
    killed = result["killed"]
    if killed["ours"]["runs"] or killed["theirs"]["runs"]:
        lines.append(
            f"producer SIGKILLed when the one reader had half the tokens "
            f"({result['interval_ms']:g} ms pace):"
        )
        for system in SYSTEMS:
            got = killed[system]
            lines.append(
                f"  {system:<7}{'; '.join(got['ends']) or '-'}: {cell(got['s_after_kill'])} s "
                f"after the kill, {cell(got['tokens'], 0)} of {got['of']} tokens"
            )
    for system, reason in result["errors"].items():
        lines.append(f"  {system} FAILED: {reason}")
    paced = result["interval_ms"]
    lines.append(
        f"CPU growth 0 -> {TOP_LEVEL} readers: ours fast {_pct(growth(result['rows'], 'ours', 0))}"
        f", theirs fast {_pct(growth(result['rows'], 'theirs', 0))}, theirs {paced:g} ms "
        f"{_pct(growth(result['rows'], 'theirs', paced))} (no target)"
    )
    lines.append(f"{'target':<72}{'ours':>10}{'theirs':>10}  verdict")
    first, second = result["targets"]
    lines.append(
        f"{first['target']:<72}{_num(first['ours']):>10}{_num(first['theirs']):>10}  "
        f"{first['verdict'] or 'n/a (not measured)'}"
    )
    lines.append(
        f"{second['target']:<72}{_pct(second['ours_growth']):>10}"
        f"{_pct(second['theirs_growth']):>10}  "
        f"{second['verdict'] or f'n/a (no 0 and {TOP_LEVEL} reader levels)'}"
    )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _row(rows: list[dict[str, Any]], pace: float, readers: int) -> dict[str, Any] | None:
    for row in rows:
        if row["pace_ms"] == pace and row["readers"] == readers:
            return row
    return None


def record(result: dict[str, Any]) -> None:
    """The scorecard rows of `python -m bench all`: the two targets, each beside the peer."""
    rows, paced = result["rows"], result["interval_ms"]
    first, second = result["targets"]
    idle = _row(rows, paced, 0)
    if idle is not None and first["verdict"] is not None:
        scorecard(
            f"worker CPU per token, {paced:g} ms pace, 0 readers (µs)",
            cell(idle["ours"]["cpu_us_per_token"], 0),
            f"resumable-stream {cell(idle['theirs']['cpu_us_per_token'], 0)}",
            "<= resumable-stream's",
            first["verdict"] == "PASS",
        )
    busy = _row(rows, paced, TOP_LEVEL)
    if idle is not None and busy is not None and second["verdict"] is not None:
        ours = cell(busy["ours"]["cpu_us_per_token"], 0)
        theirs = cell(busy["theirs"]["cpu_us_per_token"], 0)
        scorecard(
            f"producer CPU per token at {TOP_LEVEL} readers (µs), growth from 0",
            f"{ours} ({_pct(second['ours_growth'])})",
            f"resumable-stream {theirs} ({_pct(second['theirs_growth'])})",
            f"flat within {FLAT_WITHIN:.0%}",
            second["verdict"] == "PASS",
        )
