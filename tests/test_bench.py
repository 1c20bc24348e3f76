"""The benchmark runner's bookkeeping (no timed assertions: timings depend on the machine)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from medft.bench import (
    BenchResult,
    Target,
    Timing,
    benchmark_registry,
    format_table,
    load_benchmark,
    machine_summary,
    rate_result,
    run_benchmarks,
    time_interleaved,
)
from medft.cli import main as cli_main
from medft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


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


def test_registry_modules_are_importable_by_name() -> None:
    assert load_benchmark("inference").__name__ == "medft.benchmarks.inference"
    with pytest.raises(ConfigError, match=r"medft\.benchmarks\.nope"):
        load_benchmark("nope")


def test_import_medft_leaves_the_benchmarks_alone() -> None:
    """The benchmarks are tools: importing medft, its bench helpers or its CLI loads none."""
    code = (
        "import sys, medft, medft.bench, medft.cli\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('medft.benchmarks'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_saliency_benchmark_runs_without_grad_cam(monkeypatch, capsys) -> None:
    """grad-cam is a dev dependency: an installed medft times its own Grad-CAM without it."""
    from medft.benchmarks import saliency_latency

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import raises ImportError
    row = saliency_latency.measure("test_efficientnet", 1, False)
    assert "pytorch_grad_cam" not in row and row["gradcam"] > 0
    saliency_latency.print_table([row])
    assert "gradcam_all" in capsys.readouterr().out


def test_machine_summary_has_versions() -> None:
    summary = machine_summary()
    assert summary["cpu_count"] >= 1 and summary["torch"] and summary["timm"]


@pytest.mark.slow
def test_cli_bench_runs_a_real_quick_benchmark(tmp_path: Path, capsys) -> None:
    """`medft bench --quick --only inference` end to end (tiny model, well under a minute)."""
    assert cli_main(["bench", "--out", str(tmp_path), "--quick", "--only", "inference",
                     "--threads", "1"]) == 0  # fmt: skip
    names = [row["name"] for row in json.loads((tmp_path / "bench.json").read_text())]
    assert names == [
        "inference/predict",
        "inference/predictor",
        "inference/channels_last",
        "inference/bf16_autocast",
    ]
    assert "inference/predict" in capsys.readouterr().out


# ------------------------------------------------------------------------ bench scale


def _size_result(script, n: int, cpu1: float, cpu2: float, rss: float):
    return script.SizeResult(
        n_images=n, epoch1_wall_s=2 * cpu1, epoch1_cpu_s=cpu1, epoch2_wall_s=2 * cpu2,
        epoch2_cpu_s=cpu2, peak_rss_mb=rss, peak_rss_self_mb=rss, maxrss_self_mb=rss,
        num_workers=1, data_mb=n * 128 * 128 / 2**20,
    )  # fmt: skip


def test_cli_bench_scale_passes_sizes_and_keep(tmp_path: Path) -> None:
    from medft.cli import parse_args
    from medft.cli.commands import BY_NAME

    spec = BY_NAME["bench scale"].options[0]
    args = parse_args(["bench", "scale", "--out", str(tmp_path), "--sizes", "64", "128", "--keep"])
    assert spec.kwargs(args) == {"out": str(tmp_path), "sizes": (64, 128), "keep": True}
    args = parse_args(["bench", "scale", "--out", str(tmp_path)])
    assert spec.kwargs(args) == {"out": str(tmp_path), "sizes": None, "keep": False}


def test_scale_rows_judge_cpu_per_image_and_rss_growth() -> None:
    from medft.benchmarks import scale as script

    sizes = [
        _size_result(script, 1000, 10.0, 5.0, 1000.0),
        _size_result(script, 4000, 44.0, 26.0, 1010.0),  # 1.10x and 1.30x per image
    ]
    rows = {r.name: r for r in script.results_from_sizes(sizes, synth_s=1.0)}
    assert rows["scale/epoch1_cpu_1000"].met is None  # the baseline has no target
    assert rows["scale/epoch1_cpu_4000"].ratio == pytest.approx(1.10)
    assert rows["scale/epoch1_cpu_4000"].met is True
    assert rows["scale/epoch2_cpu_4000"].ratio == pytest.approx(1.30)
    assert rows["scale/epoch2_cpu_4000"].met is False
    growth = rows["scale/rss_growth_1000_to_4000"]
    assert growth.medft == pytest.approx(10.0)
    assert growth.reference == pytest.approx(3000 * 128 * 128 / 2**20)
    assert growth.met is True
    assert "4000" in script.size_table(sizes) and "1.30" in script.size_table(sizes)


def test_scale_meter_sees_cpu_and_memory_of_children(tmp_path: Path) -> None:
    import subprocess
    import sys

    from medft.benchmarks import scale as script

    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    burn = "import sys, time\nx = bytearray(64 * 2**20)\nt = time.process_time()\n"
    burn += "while time.process_time() - t < 0.3: pass\nprint('ready', flush=True)\n"
    burn += "sys.stdin.read()\n"  # stays alive (and resident) until the test closes stdin
    with script.ProcessMeter(interval=0.02) as meter:
        before = meter.cpu_seconds()
        child = subprocess.Popen(
            [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        meter.sample()
        live = meter.cpu_seconds() - before  # the child is still running
        child.communicate("")
    assert live >= 0.25
    assert meter.peak_total - meter.peak_self >= 60 * 2**20  # the child's 64 MB buffer


def test_scale_refuses_sizes_below_two_batches(tmp_path: Path) -> None:
    from medft.benchmarks import scale

    with pytest.raises(ConfigError, match="--sizes"):
        scale.run_scale(tmp_path, [10])


@pytest.mark.slow
def test_scale_end_to_end_small(tmp_path: Path) -> None:
    """Two tiny sizes through synth, the disk cache and the real loader (a few minutes)."""
    from medft.bench import run_scale_benchmark

    results = run_scale_benchmark(tmp_path, sizes=[64, 96], echo=lambda line: None)
    names = [r.name for r in results]
    assert "scale/epoch2_cpu_96" in names and "scale/rss_growth_64_to_96" in names
    assert all(r.medft > 0 for r in results if "cpu" in r.name)
    assert json.loads((tmp_path / "bench.json").read_text())[0]["name"] == names[0]
    assert not list(tmp_path.glob("scale-*"))  # synthetic data deleted


@pytest.mark.slow
def test_gpu_benchmark_script_runs_its_cpu_smoke_mode(tmp_path: Path) -> None:
    """medft.benchmarks.gpu is meant for a CUDA box; --device cpu runs the same code paths."""
    from medft.benchmarks import gpu

    argv = ["--out", str(tmp_path), "--device", "cpu", "--images", "48", "--size", "32",
            "--batch", "16", "--epochs", "1", "--backbones", "test_resnet", "--augment", "off",
            "--synth-workers", "1"]  # fmt: skip
    assert gpu.main(argv) == 0
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert row["name"] == "gpu/fit/test_resnet/no_augment"
    assert row["medft"] > 0 and row["reference"] > 0 and row["details"]["gpu"] is None
    assert len(row["details"]["loader_wait_shares"]) == 1  # one timed epoch after the warm-up


# ----------------------------------------------------------------------------- from a wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """medft's wheel, built from a copy of the sources (the checkout gets no build/ folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT / "medft", src / "medft", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp / "dist"), str(src)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    (path,) = (tmp / "dist").glob("medft-*.whl")
    return path


def test_wheel_ships_every_benchmark_module(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"medft/benchmarks/{p.name}" for p in (ROOT / "medft" / "benchmarks").glob("*.py")}
    assert "medft/benchmarks/registry.py" in modules and "medft/benchmarks/inference.py" in names
    assert modules <= names, modules - names
    assert "medft/configs/quickstart.yaml" in names  # fit_throughput's recipe


def test_cli_bench_runs_from_an_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """`medft bench --quick --only inference` with medft installed from the wheel, run
    outside the checkout, so nothing can come from the repository's folders (about 10 s)."""
    site, work, out = tmp_path / "site", tmp_path / "elsewhere", tmp_path / "out"
    work.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    code = (
        "import sys, medft\n"
        "print('medft from', medft.__file__)\n"
        "from medft.cli import main\n"
        f"sys.exit(main(['bench', '--out', {str(out)!r}, '--quick', '--only', 'inference',"
        " '--threads', '1']))\n"
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"medft from {site / 'medft' / '__init__.py'}" in done.stdout
    names = [row["name"] for row in json.loads((out / "bench.json").read_text())]
    assert "inference/predict" in names
