"""MLflow (a local file store, no server) and TensorBoard side by side through class_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medft.cli import main

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is in the dev extra")


def test_mlflow_and_tensorboard_record_one_fit(
    tmp_path: Path,
    tiny_dataset: Path,
    fit_args,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this opt-in
    run = tmp_path / "run"
    uri = f"file:{tmp_path / 'mlruns'}"
    loggers = tmp_path / "loggers.yaml"
    loggers.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "logger": [
                        {
                            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                            "init_args": {"save_dir": str(run), "name": "tensorboard"},
                        },
                        {
                            "class_path": "lightning.pytorch.loggers.MLFlowLogger",
                            "init_args": {"experiment_name": "medft-test", "tracking_uri": uri},
                        },
                    ]
                }
            }
        )
    )
    args = fit_args(tiny_dataset, run, "--trainer.max_epochs", "1", "--config", str(loggers))
    assert main(["fit", *args]) == 0
    printed = capsys.readouterr().out
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "medft-test"]
    (record,) = client.search_runs([experiment.experiment_id])
    run_id = record.info.run_id
    assert f"MLflow run {run_id}" in printed
    assert {"val/auroc", "train/loss"} & set(record.data.metrics)  # metrics arrived
    assert any(key.startswith("val/") for key in record.data.metrics)
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "run.json"} <= artifacts
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))  # side by side

    # The evaluation report joins the same run (docs/reference/running.md#experiment-tracking).
    from medft.eval.evaluate import evaluate
    from medft.tracking import log_folder

    checkpoint = next((run / "checkpoints").glob("*.ckpt"))
    evaluate(checkpoint, tiny_dataset, tmp_path / "eval", n_boot=20)
    log_folder(uri, run_id, tmp_path / "eval", "evaluation")
    names = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/metrics.json"} <= names
