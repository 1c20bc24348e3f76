"""Weights download when the hub is online and say how to carry them over when it is not.

The hub is mocked (``huggingface_hub.hf_hub_download`` replaced by a function that writes
random test_resnet weights into a temporary cache), so nothing touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm

from medft.cli import main
from medft.model.backbones import create_backbone, weights_source

REPO = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
REVISION = "1" * 40


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def online_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The hub as seen online: downloads land in the cache, as huggingface_hub lays it out."""
    import huggingface_hub
    import huggingface_hub.constants as hub_constants
    from safetensors.torch import save_file

    calls: list[tuple[str, str]] = []

    def hf_hub_download(repo_id: str, filename: str, *, revision=None, cache_dir=None, **_):
        calls.append((repo_id, filename))
        repo = (
            Path(cache_dir or hub_constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
        )
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(REVISION)
        target = repo / "snapshots" / REVISION / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(timm.create_model("test_resnet").state_dict(), str(target))
        return str(target)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def test_the_cli_leaves_hf_hub_offline_to_the_user(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["data", "check", "--input", "no/such.csv"]) == 2
    with pytest.raises(SystemExit):
        main(["fit", "--config", "configs/quickstart.yaml", "--print_config"])
    capsys.readouterr()
    assert "HF_HUB_OFFLINE" not in os.environ


def test_a_fit_of_an_uncached_backbone_downloads_it(
    online_hub: list[tuple[str, str]], tmp_path: Path, tiny_dataset: Path, fit_args
) -> None:
    args = fit_args(tiny_dataset, tmp_path / "run", "--trainer.max_epochs", "1")
    args += ["--model.backbone", "test_resnet", "--model.pretrained", "true"]
    assert main(["fit", *args]) == 0
    assert online_hub == [(REPO, "model.safetensors")]
    model = create_backbone("test_resnet", num_classes=2)  # now cached: no second download
    assert weights_source(model) == "timm" and len(online_hub) == 1


def test_offline_the_message_names_the_fix(
    hub_cache: Path, tmp_path: Path, tiny_dataset: Path, fit_args, capsys: pytest.CaptureFixture
) -> None:
    args = fit_args(tiny_dataset, tmp_path / "run", "--trainer.max_epochs", "1")
    args += ["--model.backbone", "test_resnet", "--model.pretrained", "true"]
    assert main(["fit", *args]) == 2  # conftest sets HF_HUB_OFFLINE=1, as a user may
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set in your environment" in err
    assert "medft weights pull test_resnet" in err
    assert str(hub_cache) in err and "HF_HUB_CACHE" in err
    assert "medft: error: no pretrained weights for 'test_resnet'" in err  # exit 2, no traceback


def test_weights_pull_fills_the_cache_and_says_how_to_carry_it(
    online_hub: list[tuple[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    carry = tmp_path / "carry"
    assert main(["weights", "pull", "test_resnet", "--cache-dir", str(carry)]) == 0
    out = capsys.readouterr().out
    assert online_hub == [(REPO, "model.safetensors")]
    assert f"test_resnet: {carry}" in out and "HF_HUB_CACHE" in out
    assert list(carry.rglob("model.safetensors"))


def test_weights_pull_refuses_when_offline(capsys: pytest.CaptureFixture) -> None:
    assert main(["weights", "pull", "test_resnet"]) == 2
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err


def test_weights_pull_of_a_model_without_weights_says_so(
    online_hub: list[tuple[str, str]], capsys: pytest.CaptureFixture
) -> None:
    assert main(["weights", "pull", "no_such_model_xyz"]) == 2
    assert "not a timm model" in capsys.readouterr().err and online_hub == []
