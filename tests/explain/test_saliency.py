"""Tests for medft.explain.saliency: auto layers, geometry, multi-label, un-normalised maps."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from medft.data.geometry import Geometry, fit_to_square
from medft.errors import ConfigError
from medft.explain.saliency import (
    default_preprocess,
    explain,
    prepare_input,
    resolve_target_layer,
)

LABELS = ["effusion", "nodule", "pneumothorax"]


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared: one thread per test is faster than contended threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(name: str, num_classes: int = 3, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs).eval()


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    """A non-square display-space image: smooth background, one bright blob."""
    rows, cols = np.mgrid[0:300, 0:220].astype(np.float32)
    image = 0.3 + 0.2 * rows / 300 + 0.5 * np.exp(-((rows - 90) ** 2 + (cols - 150) ** 2) / 400)
    noise = np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image + noise, 0, 1)


class QuadrantModel(nn.Module):
    """Its logit is the mean of the top-right quadrant of a feature map: nothing else counts."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 1)
        with torch.no_grad():
            self.features[0].weight.fill_(1 / 9)
            self.features[0].bias.zero_()
            self.head.weight.fill_(4.0)
            self.head.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        h, w = features.shape[-2:]
        return self.head(features[:, :, : h // 2, w // 2 :].mean(dim=(2, 3)))


class SpotModel(nn.Module):
    """Logit from one fixed window of the model input (rows 100-120, cols 40-60 of 160)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20 * x[:, :, 100:120, 40:60].mean(dim=(1, 2, 3))[:, None] - 5


def gray_preprocess(size: int, mode: str = "pad"):
    def preprocess(image: np.ndarray) -> tuple[torch.Tensor, Geometry]:
        square, geometry = fit_to_square(image, size, mode)
        return square[None, None], geometry

    return preprocess


# ----------------------------------------------------------------------- automatic target layer


@pytest.mark.parametrize(
    ("name", "layer", "grid"),
    [
        ("test_resnet", "layer4", (5, 5)),
        ("test_efficientnet", "blocks.4", (5, 5)),
        ("test_convnext", "stages.3", (5, 5)),
        ("test_mambaout", "stages.3", (5, 5)),  # NHWC stage outputs
        ("test_vit", "blocks.5.norm1", (10, 10)),  # class-token head
        ("test_vit2", "blocks.7", (10, 10)),  # average-pooled head with register tokens
    ],
)
def test_auto_layer_without_naming_one(name, layer, grid, xray):
    results = explain(tiny(name), xray, labels=LABELS)
    assert [r.layer for r in results] == [layer] * 3
    for result in results:
        assert result.raw.shape == grid
        assert result.raw.dtype == np.float32
        assert np.isfinite(result.raw).all() and np.abs(result.raw).max() > 0
        assert result.original.shape == xray.shape


def test_token_grid_comes_from_the_model_not_a_constant(xray):
    model = tiny("deit_tiny_distilled_patch16_224", embed_dim=32, depth=2, num_heads=2, img_size=64)
    (result,) = explain(model, xray, labels=LABELS, findings=["nodule"])
    assert model.num_prefix_tokens == 2  # class + distillation token, both dropped
    assert result.layer == "blocks.1.norm1"
    assert result.raw.shape == tuple(model.patch_embed.grid_size) == (4, 4)


def test_swin_nhwc_stage_is_permuted(xray):
    model = tiny(
        "swin_tiny_patch4_window7_224",
        embed_dim=16,
        depths=(1, 1),
        num_heads=(1, 1),
        window_size=4,
        img_size=64,
    )
    (result,) = explain(model, xray, labels=LABELS, findings=["effusion"])
    assert result.layer == "layers.1"
    assert result.raw.shape == (8, 8)
    assert result.geometry.size == 64  # the model's fixed size, not the 224 of its data config


def test_explicit_layer_overrides_auto(xray):
    model = tiny("test_resnet")
    by_name = explain(model, xray, labels=LABELS, target_layer="layer3")
    by_module = explain(model, xray, labels=LABELS, target_layer=model.layer3)
    assert by_name[0].layer == by_module[0].layer == "layer3"
    assert by_name[0].raw.shape == (10, 10)
    np.testing.assert_allclose(by_name[0].raw, by_module[0].raw)
    with pytest.raises(ConfigError, match="layer9"):
        explain(model, xray, labels=LABELS, target_layer="layer9")


def test_auto_layer_for_a_plain_module_is_its_last_spatial_map():
    layer = resolve_target_layer(QuadrantModel(), example_input=torch.ones(1, 1, 32, 32))
    assert layer.name == "features.1"
    with pytest.raises(ConfigError, match="example input"):
        resolve_target_layer(QuadrantModel())


def test_wrapped_backbone_is_found():
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny("test_vit")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    wrapper = Wrapper()
    inputs = torch.randn(1, 3, 160, 160)
    (result,) = explain(wrapper, inputs, labels=LABELS, findings=["nodule"])
    (direct,) = explain(wrapper.model, inputs, labels=LABELS, findings=["nodule"])
    assert result.layer == "model.blocks.5.norm1"
    np.testing.assert_allclose(result.raw, direct.raw, rtol=1e-5, atol=1e-8)


class NormalisingWrapper(nn.Module):
    """Like medft's XrayClassifier: display-space gray in, normalisation inside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.model = tiny("test_resnet")  # data config: mean 0.5, std 0.5
        self.register_buffer("input_mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("input_std", torch.full((1, 3, 1, 1), 0.5))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.expand(-1, 3, -1, -1) - self.input_mean) / self.input_std)


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_model_that_normalises_inside_gets_display_space_input_and_mean_fill(method, xray):
    wrapper = NormalisingWrapper()
    inputs, _ = default_preprocess(wrapper)(xray)
    assert inputs.shape == (1, 1, 160, 160) and inputs.min() >= 0 and inputs.max() <= 1
    options = {"labels": LABELS, "method": method, "patch": 40, "stride": 20}
    (wrapped,) = explain(wrapper, xray, findings=["nodule"], **options)
    (direct,) = explain(wrapper.model, xray, findings=["nodule"], **options)
    assert wrapped.layer == ("model.layer4" if method == "gradcam" else "input")
    # Occlusion hides pixels with the model's input_mean, i.e. 0 after its normalisation.
    np.testing.assert_allclose(wrapped.raw, direct.raw, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------- reference implementation


def vit_tokens_to_grid(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """The hand-written reshape pytorch-grad-cam users write for a ViT (1 class token)."""
    return tokens[:, 1:].unflatten(1, (side, side)).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("name", "layer", "reshape"),
    [
        ("test_resnet", "layer4", None),
        ("test_mambaout", "stages.3", lambda t: t.permute(0, 3, 1, 2)),
        ("test_vit", "blocks.5.norm1", lambda t: vit_tokens_to_grid(t, 10)),
    ],
)
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_normalised_map_equals_pytorch_grad_cam(name, layer, reshape, method, xray):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    reference_cls = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM}
    model = tiny(name)
    inputs, geometry = prepare_input(model, xray)
    (ours,) = explain(model, (inputs, geometry), labels=LABELS, method=method, findings=["nodule"])
    cam = reference_cls[method](
        model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape
    )
    reference = cam(inputs, targets=[ClassifierOutputTarget(1)])[0]

    positive = torch.from_numpy(np.maximum(ours.raw, 0))[None, None]
    size = geometry.size
    up = F.interpolate(positive, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    scaled = (up - up.min()) / (up.max() - up.min() + 1e-7)
    np.testing.assert_allclose(scaled.numpy(), reference, atol=5e-4)


# ----------------------------------------------------------------------- geometry


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_maps_come_back_at_the_original_size(mode, xray):
    model = tiny("test_resnet")
    results = explain(model, xray, labels=LABELS, preprocess=default_preprocess(model, mode=mode))
    for result in results:
        assert result.geometry.mode == mode
        assert result.original.shape == (300, 220)
        assert result.at_input().shape == (160, 160)


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_map_lands_where_the_evidence_is_in_original_pixels(mode, xray):
    """The spot model reads one window of the model input; its map must peak over that window
    once mapped back through pad or crop."""
    results = explain(
        SpotModel(),
        xray,
        labels=["spot"],
        preprocess=gray_preprocess(160, mode),
        method="occlusion",
        patch=10,
        stride=5,
    )
    (result,) = results
    expected = result.geometry.to_original_point(110, 50)
    peak = np.unravel_index(np.argmax(result.original), result.original.shape)
    assert np.hypot(peak[0] - expected[0], peak[1] - expected[1]) < 12
    if mode == "crop":  # rows the model never saw carry no saliency
        assert result.original[0].max() == 0


def test_prepared_tensor_with_its_geometry_is_accepted(xray):
    model = tiny("test_resnet")
    inputs, geometry = default_preprocess(model, mode="crop")(xray)
    from_tuple = explain(model, (inputs, geometry), labels=LABELS)
    from_kwarg = explain(model, inputs[0], geometry=geometry, labels=LABELS)
    crop = default_preprocess(model, mode="crop")
    from_image = explain(model, xray, labels=LABELS, preprocess=crop)
    for a, b, c in zip(from_tuple, from_kwarg, from_image, strict=True):
        np.testing.assert_allclose(a.original, b.original)
        np.testing.assert_allclose(a.original, c.original)


def test_default_preprocess_follows_the_model_data_config():
    model = tiny("test_resnet", in_chans=1)  # data config: 160 px, mean 0.5, std 0.5
    image = np.full((100, 50), 0.5, dtype=np.float32)
    inputs, geometry = default_preprocess(model)(image)
    assert inputs.shape == (1, 1, 160, 160)
    content = torch.from_numpy(geometry.content_mask())
    assert torch.allclose(inputs[0, 0][content], torch.tensor(0.0))  # (0.5 - 0.5) / 0.5
    assert torch.allclose(inputs[0, 0][~content], torch.tensor(-1.0))  # black padding
    three = default_preprocess(tiny("test_resnet"))(image)[0]
    assert three.shape == (1, 3, 160, 160)
    assert torch.equal(three[0, 0], three[0, 2])  # gray replicated


# ----------------------------------------------------------------------- multi-label, targets


def test_one_map_per_finding_and_maps_differ(xray):
    results = explain(tiny("test_resnet"), xray, labels=LABELS)
    assert [r.finding for r in results] == LABELS
    assert [r.index for r in results] == [0, 1, 2]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.allclose(results[i].raw, results[j].raw)
    wanted = ["pneumothorax", "effusion"]
    subset = explain(tiny("test_resnet"), xray, labels=LABELS, findings=wanted)
    assert [r.finding for r in subset] == ["pneumothorax", "effusion"]
    np.testing.assert_allclose(subset[0].raw, results[2].raw)


def test_probabilities_are_sigmoid_per_label_or_softmax(xray):
    model = tiny("test_resnet")
    inputs, geometry = prepare_input(model, xray)
    with torch.no_grad():
        logits = model(inputs)[0]
    sigmoid = explain(model, (inputs, geometry), labels=LABELS)
    softmax = explain(model, (inputs, geometry), labels=LABELS, multilabel=False)
    np.testing.assert_allclose([r.probability for r in sigmoid], logits.sigmoid(), rtol=1e-5)
    np.testing.assert_allclose([r.probability for r in softmax], logits.softmax(0), rtol=1e-5)


def test_binary_head(xray):
    (result,) = explain(tiny("test_efficientnet", num_classes=1), xray, labels=["nodule"])
    assert result.finding == "nodule"
    assert 0 < result.probability < 1
    assert result.original.shape == xray.shape


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_maps_are_not_normalised_per_image(method, xray):
    """Grad-CAM is linear in the class's head weights: tripling them triples the map. A per-image
    min-max normalisation would hide that (and make p=0.02 look like p=0.98)."""
    model = tiny("test_resnet")
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled.fc.weight[1] *= 3
    base = explain(model, xray, labels=LABELS, method=method)
    tripled = explain(scaled, xray, labels=LABELS, method=method)
    np.testing.assert_allclose(tripled[1].raw, 3 * base[1].raw, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(tripled[1].original, 3 * base[1].original, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(tripled[0].raw, base[0].raw, rtol=1e-5)
    assert tripled[1].probability != pytest.approx(base[1].probability)


def test_hirescam_map_sums_to_the_logit_for_an_average_pooled_linear_head(xray):
    """The raw map is in logit units: with global average pooling and a linear head the
    HiResCAM cells add up to logit - bias (and Grad-CAM equals HiResCAM)."""
    model = tiny("test_resnet")
    inputs, geometry = prepare_input(model, xray)
    with torch.no_grad():
        logits = model(inputs)[0] - model.fc.bias
    hires = explain(model, (inputs, geometry), labels=LABELS, method="hirescam")
    grad = explain(model, (inputs, geometry), labels=LABELS, method="gradcam")
    np.testing.assert_allclose([r.raw.sum() for r in hires], logits, rtol=1e-4, atol=1e-6)
    for a, b in zip(hires, grad, strict=True):
        np.testing.assert_allclose(a.raw, b.raw, rtol=1e-4, atol=1e-8)


# ----------------------------------------------------------------------- handcrafted models


def quadrant_input() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return 0.5 + 0.1 * torch.rand(1, 1, 64, 64, generator=generator)


def test_occlusion_peaks_in_the_only_region_that_matters():
    (result,) = explain(QuadrantModel(), quadrant_input(), labels=["finding"], method="occlusion")
    saliency = result.raw
    assert result.layer == "input" and saliency.shape == (64, 64)
    peak = np.unravel_index(np.argmax(saliency), saliency.shape)
    assert peak[0] < 32 and peak[1] >= 32
    assert saliency[:32, 32:].mean() > 0
    # Patches (8 px, stride 4) that do not touch the quadrant's receptive field change nothing.
    assert np.abs(saliency[40:, :]).max() < 1e-6 and np.abs(saliency[:, :24]).max() < 1e-6


def test_hirescam_is_confined_to_the_region_that_matters():
    (result,) = explain(QuadrantModel(), quadrant_input(), labels=["finding"], method="hirescam")
    assert result.layer == "features.1"
    assert np.abs(result.raw[32:, :]).max() == 0 and np.abs(result.raw[:, :32]).max() == 0
    assert result.raw[:32, 32:].min() > 0


def test_occlusion_explains_all_findings_from_one_sweep(xray):
    model = tiny("test_resnet")
    results = explain(model, xray, labels=LABELS, method="occlusion", patch=40, stride=40)
    assert [r.finding for r in results] == LABELS
    assert all(r.raw.shape == (160, 160) and r.original.shape == xray.shape for r in results)


# ----------------------------------------------------------------------- state and errors


def test_model_state_is_left_as_found(xray):
    model = tiny("test_resnet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain(model, xray, labels=LABELS)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_works_inside_inference_mode(xray):
    model = tiny("test_resnet")
    reference = explain(model, xray, labels=LABELS)
    with torch.inference_mode():
        inside = explain(model, xray, labels=LABELS)
    np.testing.assert_allclose(inside[0].raw, reference[0].raw)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": ["a", "b"]}, "2 names but the model has 3 outputs"),
        ({"labels": LABELS, "findings": ["fracture"]}, "unknown findings"),
        ({"labels": LABELS, "method": "lime"}, "method must be one of"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, message, xray):
    with pytest.raises(ConfigError, match=message):
        explain(tiny("test_resnet"), xray, **kwargs)


def test_bad_images_raise_config_errors(xray):
    model = tiny("test_resnet")
    with pytest.raises(ConfigError, match="gray"):
        explain(model, np.zeros((10, 10, 3), np.float32), labels=LABELS)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        explain(model, xray * 4000, labels=LABELS)
    uint8 = explain(model, (xray * 255).round().astype(np.uint8), labels=LABELS)
    assert uint8[0].original.shape == xray.shape


# ----------------------------------------------------------------------- pointing game (slow)


def blob_dataset(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, list[tuple]]:
    """64x48 images: smooth background; half carry a Gaussian blob at a random place."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:64, 0:48].astype(np.float32)
    images, labels, centres = [], [], []
    for i in range(n):
        image = 0.25 + 0.15 * rng.random() * rows / 64 + rng.normal(0, 0.03, rows.shape)
        positive = i % 2 == 0
        centre = (rng.uniform(8, 56), rng.uniform(8, 40))
        if positive:
            image += 0.5 * np.exp(-((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / 18)
        images.append(np.clip(image, 0, 1).astype(np.float32))
        labels.append(float(positive))
        centres.append(centre)
    return images, np.array(labels, dtype=np.float32), centres


def train_blob_model(seed: int = 0) -> nn.Module:
    """A small CNN trained for a few seconds to say whether an image holds a blob."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1),
    )  # fmt: skip
    preprocess = gray_preprocess(64)
    images, labels, _ = blob_dataset(512, seed=1)
    inputs = torch.cat([preprocess(image)[0] for image in images])
    targets = torch.from_numpy(labels)[:, None]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for batch in torch.randperm(len(images)).split(32):
            loss = F.binary_cross_entropy_with_logits(model(inputs[batch]), targets[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def blob_model() -> nn.Module:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_blob_model()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "hirescam", "occlusion"])
def test_pointing_game_on_a_model_trained_on_synthetic_blobs(method, blob_model):
    """The map's peak must fall within 8 px of the blob centre on most positive images."""
    test_images, test_labels, centres = blob_dataset(60, seed=2)
    hits = []
    for image, label, centre in zip(test_images, test_labels, centres, strict=True):
        if not label:
            continue
        (result,) = explain(
            blob_model,
            image,
            labels=["blob"],
            preprocess=gray_preprocess(64),
            method=method,
            patch=8,
            stride=4,
        )
        peak = np.unravel_index(np.argmax(result.original), result.original.shape)
        hits.append(np.hypot(peak[0] - centre[0], peak[1] - centre[1]) <= 8)
    assert np.mean(hits) >= 0.8, f"pointing-game hit rate {np.mean(hits):.2f}"
