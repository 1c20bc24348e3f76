"""The benchmark runner's bookkeeping (no timed assertions: timings depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medft.bench import (
    BenchResult,
    Target,
    Timing,
    benchmark_registry,
    format_table,
    machine_summary,
    rate_result,
    run_benchmarks,
    time_interleaved,
)
from medft.cli import main as cli_main
from medft.errors import ConfigError


def test_time_interleaved_calls_in_order_and_excludes_warmup() -> None:
    calls: list[str] = []
    timings = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2
    )
    assert calls == ["a", "b"] * 5  # 2 warm-up rounds + 3 timed, alternating
    assert [len(t.samples) for t in timings.values()] == [3, 3]
    assert all(s >= 0 for t in timings.values() for s in t.samples)
    with pytest.raises(ConfigError):
        time_interleaved({"a": lambda: None}, repeats=0)


def test_timing_and_rate_result() -> None:
    medft, reference = Timing([2.0, 1.0, 4.0]), Timing([1.0, 1.0, 1.0])
    assert (medft.min, medft.median) == (1.0, 2.0)
    row = rate_result("x", medft, reference, items=10, target=Target(0.9))
    assert row.medft == pytest.approx(5.0)  # 10 items / 2 s median
    assert row.reference == pytest.approx(10.0)
    assert row.medft_min == pytest.approx(2.5)  # from the slowest repeat
    assert row.ratio == pytest.approx(0.5)
    assert row.met is False and row.repeats == 3


def test_targets_higher_lower_and_not_implemented() -> None:
    lower = BenchResult("c", 0.4, 1.0, "s", 1, target=Target(0.5, higher=False))
    assert lower.met is True and str(lower.target) == "< 0.5"
    assert BenchResult("c", 0.6, 1.0, "s", 1, target=Target(0.5, higher=False)).met is False
    assert BenchResult("i", 1.0, 1.0, "s", 1).met is None
    missing = BenchResult("p", 50.0, 1.0, "x", 1, target=Target(20.0), implemented=False)
    assert missing.met is None
    assert "not implemented" in format_table([missing])


def test_run_benchmarks_writes_json_and_table(tmp_path: Path) -> None:
    seen: list[bool] = []

    def fake(quick: bool) -> list[BenchResult]:
        seen.append(quick)
        return [BenchResult("fake/one", 9.0, 10.0, "images/s", 2, target=Target(0.9))]

    lines: list[str] = []
    results = run_benchmarks(
        tmp_path, quick=True, registry={"fake": fake, "other": fake}, only=["fake"],
        echo=lines.append,
    )  # fmt: skip
    assert seen == [True] and len(results) == 1
    rows = json.loads((tmp_path / "bench.json").read_text())
    assert len(rows) == 1
    row = rows[0]
    assert row["name"] == "fake/one" and row["ratio"] == pytest.approx(0.9)
    assert row["met"] is True and row["target"] == ">= 0.9" and row["quick"] is True
    for key in ("cpu_count", "torch_threads", "torch", "timm", "gpu"):
        assert key in row["machine"]
    table = "\n".join(lines)
    assert "fake/one" in table and "0.90" in table and "yes" in table


def test_unknown_benchmark_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope"):
        run_benchmarks(tmp_path, registry={"fake": lambda q: []}, only=["nope"], echo=print)


def test_registry_lists_every_issue_benchmark() -> None:
    names = set(benchmark_registry())
    assert {"fit", "decode", "check", "cache", "freezing", "inference", "saliency"} <= names


def test_machine_summary_has_versions() -> None:
    summary = machine_summary()
    assert summary["cpu_count"] >= 1 and summary["torch"] and summary["timm"]


@pytest.mark.slow
def test_cli_bench_runs_a_real_quick_benchmark(tmp_path: Path, capsys) -> None:
    """`medft bench --quick --only inference` end to end (tiny model, well under a minute)."""
    assert cli_main(["bench", "--out", str(tmp_path), "--quick", "--only", "inference",
                     "--threads", "1"]) == 0  # fmt: skip
    names = [row["name"] for row in json.loads((tmp_path / "bench.json").read_text())]
    assert names == ["inference/predict", "inference/channels_last", "inference/bf16_autocast"]
    assert "inference/predict" in capsys.readouterr().out
