"""The scorecard of `python -m bench all`: rows written by each benchmark under `bench all` (and
only then), read back and printed as one table with verdicts. Pure: no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import _tools
from bench.resumable_report import record, summarize
from tests.test_bench_resumable import _raw


def test_rows_are_written_only_under_bench_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = tmp_path / "rows.jsonl"
    monkeypatch.delenv(_tools.SCORECARD_ENV, raising=False)
    _tools.scorecard("f", "1", "peer 2", "<= 2", True)
    assert not card.exists()
    monkeypatch.setenv(_tools.SCORECARD_ENV, str(card))
    _tools.scorecard("f", "1", "peer 2", "<= 2", True)
    _tools.scorecard("g", "3", "-", "<= 2", False)
    _tools.scorecard("h", "4", "-", "context", None)
    rows = _tools.read_scorecard(str(card))
    assert [r["verdict"] for r in rows] == ["PASS", "MISS", "-"]
    assert rows[0] == {
        "figure": "f",
        "measured": "1",
        "against": "peer 2",
        "target": "<= 2",
        "verdict": "PASS",
    }


def test_the_table_lines_up_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {
            "figure": "a long figure",
            "measured": "1",
            "against": "x",
            "target": "t",
            "verdict": "PASS",
        },
        {
            "figure": "b",
            "measured": "12.5 [1-20]",
            "against": "y",
            "target": "t",
            "verdict": "MISS",
        },
    ]
    _tools.print_scorecard(rows)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("scorecard")
    assert [line.split()[-1] for line in lines[2:]] == ["PASS", "MISS"]
    assert len({line.index("t ") for line in lines[2:]}) == 1  # the target column lines up


def test_spread_is_the_median_with_min_and_max() -> None:
    assert _tools.spread([3.0, 1.0, 2.0]) == "2.00 [1.00-3.00]"
    assert _tools.spread([4.0], "{:.0f}") == "4"
    assert _tools.spread([]) == "-"


def test_the_resumable_bench_records_its_two_targets_beside_the_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = tmp_path / "rows.jsonl"
    monkeypatch.setenv(_tools.SCORECARD_ENV, str(card))
    record(summarize(_raw(ours_0=130.0, ours_100=200.0, theirs_0=120.0)))
    first, second = _tools.read_scorecard(str(card))
    assert first["verdict"] == "MISS" and "resumable-stream 120" in first["against"]
    assert second["verdict"] == "MISS" and "+" in second["measured"]


def _paced_result(server_us: list[float]) -> dict[str, object]:
    row = {"worker_us": [150.0, 160.0, 170.0], "server_us": server_us}
    windowed = {"worker_us": [120.0], "server_us": [30.0]}
    return {
        "server": "embedded",
        "tokens": 10,
        "interval_ms": 5.0,
        "runs": 3,
        "flush_ms": {"0": row, "10": windowed},
        "ping": {"client_us": [100.0], "server_us": [30.0, 31.0, 32.0]},
        "target_server_us": 20.0,
        "verdict": _tools.verdict(sorted(server_us)[1] <= 20.0),
    }


def test_the_paced_bench_prints_and_records_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import paced

    card = tmp_path / "rows.jsonl"
    monkeypatch.setenv(_tools.SCORECARD_ENV, str(card))
    result = _paced_result([60.0, 50.0, 70.0])
    paced._print(result)
    paced._record(result)
    out = capsys.readouterr().out
    assert "60 [50-70]" in out and out.rstrip().endswith("MISS")
    (row,) = _tools.read_scorecard(str(card))
    assert row["measured"].startswith("60 [50-70]; flush_ms 10: 30")
    assert row["against"] == "one PING per 5 ms: 31 [30-32]" and row["verdict"] == "MISS"
    with pytest.raises(SystemExit):
        paced.main(["--runs", "0"])
