"""MONAI transforms: cacheable prefix, seeded augmentation, compact form, CLAHE adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import RandFlipd, Randomizable
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medft.data.transforms import (
    AugmentConfig,
    ClampIntensityd,
    FromCompact,
    LoadXrayd,
    ToCompact,
    build_transforms,
    metadata_off,
    share_random_state,
)
from medft.errors import ConfigError, DicomReadError

SIZE = 32


def _png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _gradient(height: int, width: int) -> np.ndarray:
    """An asymmetric 8-bit test image: flips and rotations change it."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 3 + y * 7) % 256).astype(np.uint8)


def _dicom(path: Path, pixels: np.ndarray) -> str:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "SECRET-PATIENT-1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return str(path)


@pytest.fixture
def png(tmp_path: Path) -> str:
    return _png(tmp_path / "wide.png", _gradient(40, 60))


def _train_chain(**augment: float):
    prefix, random_part = build_transforms(
        image_size=SIZE, fit_mode="pad", train=True, augment=AugmentConfig(**augment)
    )
    return prefix, random_part, share_random_state(random_part)


def test_prefix_gives_compact_letterboxed_square(png: str) -> None:
    prefix, _ = build_transforms(image_size=SIZE, fit_mode="pad", train=False)
    out = prefix({"image": png})
    image = out["image"]
    assert image.dtype == np.uint8 and image.shape == (1, SIZE, SIZE)
    # 40x60 into 32: content rows are the middle 21; the letterbox rows are black.
    assert image[0, :5].max() == 0 and image[0, -5:].max() == 0
    assert image[0, 8:24].max() > 0
    assert out["image_geometry"]["resized_shape"] == (21, 32)
    assert out["image_meta"].original_shape == (40, 60)


def test_crop_mode_fills_the_square(png: str) -> None:
    prefix, _ = build_transforms(image_size=SIZE, fit_mode="crop", train=False)
    image = prefix({"image": png})["image"]
    assert image.shape == (1, SIZE, SIZE)
    assert (image[0, :, 0] > 0).any() and (image[0, 0, :] > 0).any()


def test_load_xrayd_reads_dicom_in_display_space(tmp_path: Path) -> None:
    pixels = np.tile(np.linspace(0, 4095, 24), (16, 1))
    path = _dicom(tmp_path / "x.dcm", pixels)
    out = LoadXrayd("image")({"image": path})
    image = out["image"]
    assert image.shape == (1, 16, 24) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[0, 0, -1] > image[0, 0, 0]
    meta = out["image_meta"]
    assert "SECRET-PATIENT-1" not in repr(meta)  # only the salted hash leaves the reader


def test_prefix_raises_the_readers_own_error(tmp_path: Path) -> None:
    """Not MONAI's RuntimeError wrapper: the bad-file policy catches the reader's type."""
    bad = tmp_path / "bad.dcm"
    bad.write_text("not an image")
    prefix, _ = build_transforms(image_size=SIZE, fit_mode="pad", train=False)
    with pytest.raises(DicomReadError, match=r"bad\.dcm"):
        prefix({"image": str(bad)})


def test_prefix_is_cacheable(png: str) -> None:
    """No random transform in the prefix (MONAI caches up to the first one); same output."""
    prefix, _ = build_transforms(
        image_size=SIZE, fit_mode="pad", train=True, augment=AugmentConfig()
    )
    assert not any(isinstance(t, Randomizable) for t in prefix.transforms)
    first = prefix({"image": png})["image"]
    second = prefix({"image": png})["image"]
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("dtype, levels", [("uint8", 255), ("uint16", 65535)])
def test_compact_round_trip(dtype: str, levels: int) -> None:
    image = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)
    compact = ToCompact(dtype)(image)
    assert compact.dtype == np.dtype(dtype)
    back = FromCompact()(compact)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    assert np.abs(back.numpy() - image).max() <= 0.5 / levels + 1e-7
    clipped = ToCompact(dtype)(np.array([[-0.5, 1.5]], dtype=np.float32))
    assert clipped.tolist() == [[0, levels]]


def test_random_part_output_shape_range_dtype(png: str) -> None:
    prefix, random_part, state = _train_chain(intensity_prob=1.0, noise_std=0.2)
    compact = prefix({"image": png})["image"]
    for seed in range(5):
        state.seed(seed)
        with metadata_off():
            image = random_part({"image": compact})["image"]
        assert type(image) is torch.Tensor  # a plain tensor, not a MONAI MetaTensor
        assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float32
        assert image.min() >= 0.0 and image.max() <= 1.0  # clamped after the noise


def test_augmentation_is_seeded_and_varies(png: str) -> None:
    prefix, random_part, state = _train_chain()
    compact = prefix({"image": png})["image"]

    def draw(seed: int) -> torch.Tensor:
        state.seed(seed)
        with metadata_off():
            return random_part({"image": compact})["image"]

    torch.testing.assert_close(draw(3), draw(3), rtol=0, atol=0)
    assert not torch.equal(draw(3), draw(4))


def test_eval_random_part_only_restores_floats(png: str) -> None:
    prefix, random_part = build_transforms(
        image_size=SIZE, fit_mode="pad", train=False, augment=AugmentConfig()
    )
    compact = prefix({"image": png})["image"]
    image = random_part({"image": compact})["image"]
    np.testing.assert_allclose(np.asarray(image), compact / np.float32(255), atol=1e-7)


def test_hflip_is_off_by_default_and_flips_when_asked(png: str) -> None:
    assert AugmentConfig().hflip_prob == 0.0
    _, default_chain = build_transforms(
        image_size=SIZE, fit_mode="pad", train=True, augment=AugmentConfig()
    )
    assert not any(isinstance(t, RandFlipd) for t in default_chain.transforms)

    still = dict(rotate_degrees=0.0, scale_range=0.0, translate_fraction=0.0, intensity_prob=0.0)
    prefix, flipping, state = _train_chain(hflip_prob=1.0, **still)
    compact = prefix({"image": png})["image"]
    state.seed(0)
    with metadata_off():
        flipped = flipping({"image": compact})["image"]
    expected = np.flip(compact, axis=2) / np.float32(255)
    np.testing.assert_allclose(flipped.numpy(), expected, atol=1e-6)


def test_clamp_keeps_display_range() -> None:
    out = ClampIntensityd("image")({"image": torch.tensor([[-0.2, 0.5, 1.3]])})
    assert out["image"].tolist() == [[0.0, 0.5, 1.0]]


def test_clahe_adapter_is_seeded_and_keeps_types(png: str) -> None:
    albumentations = pytest.importorskip("albumentations")
    from medft.data.albu import AlbumentationsD, clahe_d

    compact = build_transforms(image_size=SIZE, fit_mode="pad", train=False)[0]({"image": png})
    image = FromCompact()(compact["image"])
    clahe = clahe_d("image", prob=1.0, clip_limit=(3.0, 4.0), tile_grid_size=(2, 2))
    clahe.set_random_state(7)
    first = clahe({"image": image})["image"]
    clahe.set_random_state(7)
    again = clahe({"image": image})["image"]
    assert isinstance(first, torch.Tensor) and first.shape == image.shape
    assert first.dtype == torch.float32
    assert torch.equal(first, again)
    assert not torch.equal(first, image)

    never = clahe_d("image", prob=0.0)
    assert never({"image": image})["image"] is image
    with pytest.raises(ValueError, match=r"p=1\.0"):
        AlbumentationsD("image", albumentations.CLAHE(p=0.5))


def test_clahe_joins_the_chain_when_enabled() -> None:
    from medft.data.albu import AlbumentationsD

    _, chain = build_transforms(
        image_size=SIZE, fit_mode="pad", train=True, augment=AugmentConfig(clahe_prob=0.3)
    )
    assert any(isinstance(t, AlbumentationsD) for t in chain.transforms)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"fit_mode": "stretch"}, "data.fit_mode"),
        ({"compact_dtype": "float16"}, "data.cache_dtype"),
        ({"image_size": 4}, "data.image_size"),
    ],
)
def test_bad_choices_name_the_key(kwargs: dict, key: str) -> None:
    options = {"image_size": SIZE, "fit_mode": "pad", "train": False, **kwargs}
    with pytest.raises(ConfigError, match=key):
        build_transforms(**options)


def test_augment_config_validates() -> None:
    with pytest.raises(ConfigError, match="hflip_prob"):
        AugmentConfig(hflip_prob=1.5)
    with pytest.raises(ConfigError, match="noise_std"):
        AugmentConfig(noise_std=-0.1)
