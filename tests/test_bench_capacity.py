"""The capacity benchmark's pure parts: arguments, levels, the window, the summary and the
verdict from synthetic figures (no server, no timing)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest

from bench import capacity
from bench._capacity_run import Plan, parse_tokens, summarise
from bench._sampling import top_costs


def _settings(*argv: str) -> dict[str, Any]:
    return capacity.settings(capacity.build_parser().parse_args(list(argv)))


def test_levels_parse_counts_and_thousands() -> None:
    assert capacity.parse_levels("100,500,1k, 2000") == [100, 500, 1000, 2000]


@pytest.mark.parametrize("text", ["", "0", "-5", "1.5", "ten", "100,,500"])
def test_levels_refuse_what_is_not_a_positive_count(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        capacity.parse_levels(text)


def test_default_settings_run_four_levels_and_the_flush_row_at_1000() -> None:
    cfg = _settings()
    assert cfg["levels"] == [100, 500, 1000, 2000]
    assert cfg["runs"] == {100: 3, 500: 3, 1000: 1, 2000: 1}
    assert (cfg["tokens"], cfg["skip_s"], cfg["flush_at"]) == (150, 1.0, 1000)


def test_quick_runs_two_levels_with_fewer_tokens() -> None:
    cfg = _settings("--quick")
    assert cfg["levels"] == [100, 500]
    assert cfg["tokens"] < 150
    assert cfg["flush_at"] == 500  # no 1,000 level: the flush row goes to the largest


def test_runs_levels_and_no_flush_row_as_given() -> None:
    cfg = _settings("--levels", "200,1k", "--runs", "2", "--no-flush-row")
    assert cfg["runs"] == {200: 2, 1000: 2}
    assert cfg["flush_at"] is None


def test_profile_runs_once_at_1000_without_the_flush_row() -> None:
    cfg = _settings("--profile")
    assert (cfg["levels"], cfg["runs"], cfg["flush_at"]) == ([1000], {1000: 1}, None)


def test_bad_arguments_exit_with_usage() -> None:
    with pytest.raises(SystemExit):
        capacity.build_parser().parse_args(["--levels", "many"])


def test_plan_window_skips_the_start_and_ends_before_the_last_token() -> None:
    plan = Plan(100, tokens=150, interval_s=0.02, skip_s=1.0)
    start, end = plan.window(1000.0)
    assert start == pytest.approx(1001.02)
    assert end < 1000.0 + 149 * 0.02
    assert "gate=G phase=0.010000 " in plan.query("G", 50)  # phases spread over one interval
    with pytest.raises(ValueError, match="no steady window"):
        Plan(100, tokens=50, skip_s=1.0).window(0.0)


def test_tokens_parse_due_and_produce_times() -> None:
    assert parse_tokens([(3.0, "1.000000/2.500000 ")]) == [(1.0, 2.5, 3.0)]


def _answer(start: float, lag: float) -> list[tuple[float, float, float]]:
    """Ten tokens 0.1 s apart from `start`, produced on time, received `lag` s later."""
    return [(start + k / 10, start + k / 10, start + k / 10 + lag) for k in range(10)]


def test_summary_counts_the_window_and_divides_cpu_by_its_tokens() -> None:
    plan = Plan(2, tokens=10, interval_s=0.1, skip_s=0.0)
    answers = [_answer(0.0, 0.002), _answer(0.0, 0.004)]
    samples = [(0.25, 1.0, 5.0, 2.0), (0.75, 1.01, 5.002, 2.004)]
    got = summarise(plan, answers, samples, ["worker"], 0.1)
    assert got["produced_in_window"] == got["received_in_window"] == 10  # 0.3 .. 0.7, twice
    assert got["worker_us_per_token"] == pytest.approx(1000.0)
    assert got["server_us_per_token"] == pytest.approx(200.0)
    assert got["client_us_per_token"] == pytest.approx(400.0)
    assert got["worker_cpu_pct"] == pytest.approx(2.0)
    assert got["lag_ms"]["p99"] == pytest.approx(4.0)
    assert got["running_in_window"] == 2
    assert (got["delivered"], got["expected"], got["failed"]) == (20, 20, 1)


def _run(lag_p99: float, *, ran: int = 1000, delivered: int = 100) -> dict[str, Any]:
    return {
        "worker_us_per_token": 20.0,
        "server_us_per_token": 5.0,
        "client_us_per_token": 8.0,
        "worker_cpu_pct": 60.0,
        "server_cpu_pct": 10.0,
        "client_cpu_pct": 50.0,
        "keeps_up": 1.0,
        "lag_ms": {"p50": 1.0, "p99": lag_p99},
        "due_lag_ms": {"p50": 2.0, "p99": lag_p99 + 1},
        "delivered": delivered,
        "expected": 100,
        "running_in_window": ran,
        "failed": 0,
        "failures": [],
    }


def test_row_verdict_from_the_median_p99_and_nothing_lost() -> None:
    row = capacity.aggregate(1000, 0.0, [_run(8.0), _run(12.0), _run(9.0)])
    assert row["lag_p99_ms"] == {"median": 9.0, "min": 8.0, "max": 12.0}
    assert row["meets_target"] and row["counts"]
    assert not capacity.aggregate(1000, 0.0, [_run(11.0)])["meets_target"]
    assert not capacity.aggregate(1000, 0.0, [_run(5.0, delivered=99)])["meets_target"]
    assert not capacity.aggregate(1000, 0.0, [_run(5.0, ran=900)])["meets_target"]
    assert not capacity.aggregate(1000, 10.0, [_run(5.0)])["counts"]  # the flush row


def test_table_prints_every_row_and_the_target_verdict() -> None:
    rows = [
        capacity.aggregate(500, 0.0, [_run(3.0, ran=500), _run(4.0, ran=500)]),
        capacity.aggregate(1000, 0.0, [_run(14.0)]),
    ]
    lines = list(capacity.table(rows, "embedded", 150, 20.0))
    assert any(line.split()[0] == "500" and line.endswith("PASS") for line in lines)
    assert any(line.split()[0] == "1,000" and line.endswith("MISS") for line in lines)
    assert "[3.0-4.0]" in "\n".join(lines)  # spreads over runs
    assert lines[-1] == f"{capacity.TARGET}: MISS"
    assert any("runs 1" in line for line in lines)


def test_table_says_when_the_target_level_was_not_measured() -> None:
    lines = list(capacity.table([capacity.aggregate(100, 0.0, [_run(1.0, ran=100)])], "x", 1, 20))
    assert lines[-1].endswith("not measured (no N = 1,000 row at flush_ms 0)")


def test_profile_costs_are_shares_of_the_measured_cpu_per_token() -> None:
    stacks = {"samples": 100, "own": {"a": 60, "b": 40}, "cumulative": {"a": 60, "b": 100}}
    rows = top_costs(stacks, cpu_s=1.0, tokens=10_000)  # 100 µs per token in all
    assert [r["function"] for r in rows] == ["a", "b"]
    assert rows[0]["own_us_per_token"] == pytest.approx(60.0)
    assert rows[1]["cum_us_per_token"] == pytest.approx(100.0)


async def test_the_gate_gives_every_waiting_answer_the_written_start_time(tmp_path: Any) -> None:
    from bench._capacity_run import open_gate
    from bench.apps import _Gates

    gates, path = _Gates(), str(tmp_path / "gate")
    waiting = [asyncio.create_task(gates.start_time(path, timeout_s=30)) for _ in range(3)]
    open_gate(path, 1234.5)
    assert await asyncio.wait_for(asyncio.gather(*waiting), 30) == [1234.5] * 3
    assert not (tmp_path / "gate.tmp").exists()  # written aside, then renamed into place
