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
