"""A cv study splits the manifest its folds will train on: `medft fit`'s own reading (issue 19).

The study used to read ``data.manifest``/``labels``/``uncertain`` from the YAML and the
overrides by hand, which missed LightningCLI forms such as ``--data other.yaml`` and repeated
the data module's defaults; it now asks LightningCLI (``--print_config``, nothing built).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from medft.errors import ConfigError
from medft.workflows.cv import resolved_data, run

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def test_a_data_file_in_the_overrides_is_what_the_study_splits(tmp_path: Path) -> None:
    section = tmp_path / "data.yaml"  # a data section in its own file, as LightningCLI allows
    section.write_text(yaml.safe_dump({"manifest": "b.csv", "labels": ["abnormal"],
                                       "uncertain": "positive"}))  # fmt: skip
    data = resolved_data(QUICKSTART, ["--data.manifest", "a.csv", "--data", str(section)])
    assert (data["manifest"], data["labels"], data["uncertain"]) == (
        "b.csv",
        ["abnormal"],
        "positive",
    )
    later = resolved_data(QUICKSTART, ["--data", str(section), "--data.labels=[x, y]"])
    assert later["labels"] == ["x", "y"]  # the later argument wins, as in `medft fit`


def test_the_data_modules_defaults_come_from_the_data_module(tmp_path: Path) -> None:
    from inspect import signature

    from medft.data.datamodule import XrayDataModule

    data = resolved_data(QUICKSTART, ["--data.manifest", "a.csv"])
    assert data["uncertain"] == signature(XrayDataModule).parameters["uncertain"].default


def test_a_config_fit_would_refuse_is_refused_before_the_study_is_written(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    out = tmp_path / "study"
    with pytest.raises(ConfigError, match=r"data\.cachee"):
        run(QUICKSTART, 2, out, overrides=["--data.manifest", str(tiny_dataset),
                                           "--data.cachee", "memory"])  # fmt: skip
    assert not (out / "study.json").exists()


def test_the_study_records_the_resolved_settings(tmp_path: Path, tiny_dataset: Path) -> None:
    """Only the split is made (--fold 5 of 2 is refused after prepare), so this is quick."""
    section = tmp_path / "data.yaml"
    section.write_text(yaml.safe_dump({"manifest": str(tiny_dataset), "labels": ["abnormal"]}))
    out = tmp_path / "study"
    with pytest.raises(ConfigError, match="--fold 5"):
        run(QUICKSTART, 2, out, fold=5, overrides=["--data", str(section)])
    study = json.loads((out / "study.json").read_text())
    assert (study["manifest"], study["labels"]) == (str(tiny_dataset), ["abnormal"])
