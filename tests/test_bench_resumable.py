"""`python -m bench resumable`'s pure parts: arguments, the skip path without Node, the
install cache's checks, the summary and its table (no server, no Node process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import resumable, resumable_node
from bench.__main__ import BENCHMARKS
from bench.resumable_report import format_table, summarize
from bench.run_all import ORDER


def test_registered_after_peers() -> None:
    assert BENCHMARKS["resumable"][0] == "bench.resumable"
    assert ORDER.index("resumable") == ORDER.index("peers") + 1


def test_arguments_defaults_and_quick() -> None:
    args = resumable.parse_args([])
    assert (args.tokens, args.runs, args.levels, args.interval_ms) == (500, 3, [0, 1, 10, 100], 5)
    quick = resumable.parse_args(["--quick", "--json"])
    assert (quick.tokens, quick.runs, quick.levels, quick.json) == (200, 1, [0, 10], True)
    assert resumable.parse_args(["--levels", "10,0,10"]).levels == [0, 10]


@pytest.mark.parametrize(
    "argv", [["--levels", "a,b"], ["--levels", "-1"], ["--tokens", "1"], ["--runs", "0"]]
)
def test_arguments_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        resumable.parse_args(argv)


def test_skips_without_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert resumable.main(["--json", "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"skipped": True, "reason": "node and npm not found on PATH"}
    assert resumable.main(["--cache-dir", str(tmp_path / "cache")]) == 0
    assert capsys.readouterr().out.startswith("resumable: skipped: node and npm not found")
    assert not (tmp_path / "cache").exists()  # nothing installed


def test_install_needs_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(resumable_node.NodeUnavailable, match="npm not found"):
        resumable_node.ensure_packages(tmp_path / "cache")


def test_cached_install_is_reused_only_at_the_pinned_versions(tmp_path: Path) -> None:
    modules = tmp_path / resumable_node.cache_key() / "node_modules"
    assert resumable_node.cache_key().startswith("resumable-stream-")
    for spec in resumable_node.PACKAGES:
        name, _, version = spec.rpartition("@")
        (modules / name).mkdir(parents=True)
        (modules / name / "package.json").write_text(json.dumps({"version": version}))
    assert resumable_node.ensure_packages(tmp_path) == modules  # no npm call needed
    (modules / "redis" / "package.json").write_text(json.dumps({"version": "0.0.1"}))
    assert not resumable_node._installed(modules)


def _level(cpu: float, lag: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"cpu_us_per_token": cpu, "readers": 0}
    if lag is not None:
        out.update(lag_ms={"p50": lag, "p99": lag * 2, "mean": lag, "n": 1.0}, complete=True)
    return out


def _raw(ours_0: float, ours_100: float, theirs_0: float) -> dict[str, Any]:
    levels: dict[str, list[dict[str, Any]]] = {}
    for pace in ("0", "5"):
        for n in (0, 100):
            lag = None if n == 0 else 1.5
            ours = ours_0 if n == 0 else ours_100
            theirs = theirs_0 if n == 0 else theirs_0 * 40
            levels[f"{pace}/{n}/ours"] = [_level(ours, lag), _level(ours + 10, lag)]
            levels[f"{pace}/{n}/theirs"] = [_level(theirs, lag)]
    late = {
        "ours": [{"got": "replay to generation_done", "tokens": 10, "whole_answer": True, "ms": 3}],
        "theirs": [{"got": "null (stream done)", "tokens": 0, "whole_answer": False, "ms": 1}],
    }
    kill = {"tokens": 5, "of": 10}
    killed = {
        "ours": [{**kill, "end": "error: Worker lost", "ended": True, "s_after_kill": 3.1}],
        "theirs": [{**kill, "end": "no end (waited 25 s)", "ended": False, "s_after_kill": 25.2}],
    }
    return {
        "server": "embedded valkey",
        "tokens": 10,
        "interval_ms": 5.0,
        "runs": 2,
        "levels": [0, 100],
        "versions": {"resumable-stream": "2.2.13", "redis": "6.3.1", "node": "v20"},
        "errors": {},
        "samples": {"levels": levels, "late": late, "killed": killed},
    }


def test_summary_and_table_pass() -> None:
    result = summarize(_raw(ours_0=100.0, ours_100=105.0, theirs_0=120.0))
    first, second = result["targets"]
    assert (first["verdict"], second["verdict"]) == ("PASS", "PASS")
    assert result["rows"][0]["ours"]["cpu_us_per_token"] == {
        "median": 105.0,
        "min": 100.0,
        "max": 110.0,
    }
    table = format_table(result)
    assert "105.0 [100.0-110.0]" in table
    assert "1.50 / 3.00" in table
    assert "error: Worker lost" in table and "no end (waited 25 s)" in table
    verdicts = [line.split()[-1] for line in table.splitlines() if line.endswith(("PASS", "MISS"))]
    assert verdicts == ["PASS", "PASS"]
    json.dumps(result)  # the --json document is plain JSON


def test_summary_misses_and_unmeasured_levels() -> None:
    result = summarize(_raw(ours_0=100.0, ours_100=150.0, theirs_0=50.0))
    assert [t["verdict"] for t in result["targets"]] == ["MISS", "MISS"]
    raw = _raw(ours_0=1.0, ours_100=1.0, theirs_0=1.0)
    raw["levels"] = [0]
    raw["samples"]["levels"] = {k: v for k, v in raw["samples"]["levels"].items() if "/0/" in k}
    result = summarize(raw)
    assert result["targets"][1]["verdict"] is None
    assert "n/a (no 0 and 100 reader levels)" in format_table(result)
