"""Every script in examples/ runs with ``--smoke`` (tiny model, tiny synthetic data, one epoch).

Each one runs in its own subprocess, as a user would run it, so the docs' examples never drift
from the code. The runs take a minute or more each on a 2-core CPU, hence ``slow``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))

#: What each example must leave under its --out folder (glob patterns).
OUTPUTS = {
    "cv_study.py": ["study/summary.json", "study/oof_predictions.csv", "study/report.html"],
    "custom_backbone.py": ["stages.json", "run/checkpoints/last.ckpt"],
    "custom_schedule.py": ["plan.json", "run/**/*.ckpt"],
    "ensemble_tta.py": ["results.json", "study/summary.json", "pred/*/predictions.csv"],
}


def test_every_example_is_covered_and_has_a_smoke_flag() -> None:
    assert SCRIPTS, "examples/ is empty"
    for script in SCRIPTS:
        assert script.name in OUTPUTS, f"add the outputs of {script.name} to OUTPUTS"
        tree = ast.parse(script.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{script.name} needs a docstring saying how to run it"
        flags = [
            node.args[0].value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "attr", "") == "add_argument"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ]
        assert {"--smoke", "--out"} <= set(flags), f"{script.name}: needs --smoke and --out"


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_example_runs_with_smoke(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, f"{script.name} failed:\n{done.stderr[-3000:]}"
    for pattern in OUTPUTS[script.name]:
        assert list(out.glob(pattern)), f"{script.name} wrote no {pattern} in {seconds:.0f} s"
    print(f"{script.name}: {seconds:.0f} s")


@pytest.mark.slow
def test_pneumoniamnist_study_script_runs_in_smoke_mode(tmp_path: Path) -> None:
    """The real-data tutorial's script: import, audit and a 2-fold study on the 624 images."""
    script = EXAMPLES / "pneumoniamnist_study.sh"
    data = EXAMPLES.parent / "tests" / "data" / "corpus" / "pneumoniamnist"
    assert (data / "pneumoniamnist_test.npz").is_file(), f"{data}: the test corpus is incomplete"
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "SMOKE": "1",
        "DATA": str(data),
        "MEDFT": str(bin_dir / "medft"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
    }
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pooled out-of-fold AUROC" in done.stdout
    for name in ("data/manifest.csv", "audit/audit.json", "study/summary.json",
                 "study/report.html"):  # fmt: skip
        assert (tmp_path / "out" / name).is_file(), name


@pytest.mark.slow
def test_recipe_study_script_runs_in_smoke_mode(tmp_path: Path) -> None:
    """The recipe study (docs/finetuning.md): two recipes on the same folds, then compared."""
    script = EXAMPLES / "recipe_study.sh"
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "SMOKE": "1",
        "RECIPES": "default ema",
        "MEDFT": str(bin_dir / "medft"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MPLBACKEND": "Agg",
    }
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "vs default (paired 95% CI)" in done.stdout
    for name in ("default/summary.json", "ema/summary.json", "compare_ema.json"):
        assert (tmp_path / "out" / name).is_file(), name
