"""DICOM reader on files written here with pydicom: every step of the display chain, the
size checks, colour, multi-frame, compression, sources, options and what XrayMeta holds.

Expected images are computed in the tests from the DICOM formulas (PS3.3 C.11.2.1.2), not
from the reader, so dropping or reordering any step of the chain fails a test.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import struct
import tracemalloc
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from medft.data import _dicom_pixels
from medft.data._dicom_display import (
    LINEAR_EXACT,
    SIGMOID,
    Affine,
    DisplayPlan,
    Lut,
    Window,
    render,
)
from medft.data.dicom import (
    XrayMeta,
    is_dicom,
    load_image,
    patient_hash,
    read_image,
    read_xray,
)
from medft.errors import ConfigError, DicomReadError, UnsupportedCodecError

pytestmark = pytest.mark.timeout(60)

ATOL = 1e-6


# ----------------------------------------------------------------------------- helpers
def make_ds(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attrs: Any,
) -> Dataset:
    """A minimal valid DX dataset holding ``pixels`` (2-D, 3-D frames, or H x W x 3)."""
    pixels = np.ascontiguousarray(pixels)
    colour = photometric in ("RGB", "YBR_FULL")
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = pixels.tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def write(tmp_path: Path, pixels: np.ndarray, name: str = "x.dcm", **kw: Any) -> Path:
    return save(make_ds(pixels, **kw), tmp_path / name)


def linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM LINEAR window (width > 1) to [0, 1], written out independently."""
    x = np.asarray(x, dtype=np.float64)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, y))


def minmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x - x.min()) / (x.max() - x.min())


def phantom(shape: tuple[int, int] = (48, 40), top: int = 4095, seed: int = 0) -> np.ndarray:
    """A 12-bit radiograph-like test image: smooth body, a dense disc, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    body = 1500 + 1500 * np.exp(-(((x - shape[1] / 2) / 12) ** 2 + ((y - shape[0] / 2) / 16) ** 2))
    disc = 900 * (((x - 10) ** 2 + (y - 12) ** 2) < 25)
    image = body + disc + rng.normal(0, 40, shape)
    return np.clip(image, 0, top).astype(np.uint16)


# ------------------------------------------------------------------------- VOI: windows
def test_linear_window_follows_the_dicom_formula(tmp_path: Path) -> None:
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    path = write(tmp_path, stored, bits_stored=12, WindowCenter=1000, WindowWidth=500)
    image, meta = read_xray(path)
    assert image.dtype == np.float32 and image.shape == (16, 16)
    np.testing.assert_allclose(image, linear(stored, 1000, 500), atol=ATOL)
    assert meta.voi_source == "window" and meta.window == (1000.0, 500.0)
    assert image.min() == 0.0 and image.max() == 1.0  # saturates on both sides


@pytest.mark.parametrize(
    ("function", "formula"),
    [
        (LINEAR_EXACT, lambda x, c, w: np.clip((x - c) / w + 0.5, 0, 1)),
        (SIGMOID, lambda x, c, w: 1 / (1 + np.exp(-4 * (x - c) / w))),
    ],
)
def test_voi_lut_function(tmp_path: Path, function: str, formula: Any) -> None:
    stored = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    path = write(tmp_path, stored, WindowCenter=2000, WindowWidth=1000, VOILUTFunction=function)
    image, _ = read_xray(path)
    np.testing.assert_allclose(image, formula(stored.astype(np.float64), 2000, 1000), atol=1e-5)


def test_multiple_windows_first_applied_all_listed(tmp_path: Path) -> None:
    stored = phantom()
    path = write(tmp_path, stored, WindowCenter=[2500, 1800], WindowWidth=[1200, 3000])
    image, meta = read_xray(path)
    np.testing.assert_allclose(image, linear(stored, 2500, 1200), atol=ATOL)
    assert meta.window_presets == ((2500.0, 1200.0), (1800.0, 3000.0))


def test_explicit_and_none_voi_override_the_header(tmp_path: Path) -> None:
    stored = phantom()
    path = write(tmp_path, stored, WindowCenter=2500, WindowWidth=1200)
    image, meta = read_xray(path, voi=(2000, 2001))
    np.testing.assert_allclose(image, linear(stored, 2000, 2001), atol=ATOL)
    assert meta.voi_source == "explicit"
    image, meta = read_xray(path, voi="none")
    np.testing.assert_allclose(image, minmax(stored), atol=ATOL)
    assert meta.voi_source == "minmax"
    assert meta.window == pytest.approx(
        ((stored.min() + stored.max()) / 2, float(stored.max()) - stored.min())
    )


def test_no_window_means_minmax(tmp_path: Path) -> None:
    stored = phantom()
    image, meta = read_xray(write(tmp_path, stored))
    np.testing.assert_allclose(image, minmax(stored), atol=ATOL)
    assert image.min() == 0.0 and image.max() == 1.0
    assert meta.voi_source == "minmax"


def test_window_missing_the_data_is_skipped(tmp_path: Path) -> None:
    """A header window entirely outside the values (a broken header) would give a flat image."""
    stored = phantom() + 30000
    path = write(tmp_path, stored, WindowCenter=[500, 31500], WindowWidth=[400, 3000])
    image, meta = read_xray(path)
    np.testing.assert_allclose(image, linear(stored, 31500, 3000), atol=ATOL)
    assert meta.window == (31500.0, 3000.0)
    path = write(tmp_path, stored, WindowCenter=500, WindowWidth=400)
    image, meta = read_xray(path)
    assert meta.voi_source == "minmax" and image.std() > 0.05


# ----------------------------------------------------------------------- Modality LUT
def test_rescale_is_applied_before_the_window(tmp_path: Path) -> None:
    stored = phantom()
    modality = stored * 2.0 - 3000.0
    path = write(
        tmp_path,
        stored,
        RescaleSlope=2,
        RescaleIntercept=-3000,
        WindowCenter=1500,
        WindowWidth=2000,
    )
    image, _ = read_xray(path)
    np.testing.assert_allclose(image, linear(modality, 1500, 2000), atol=ATOL)
    assert not np.allclose(image, linear(stored, 1500, 2000), atol=0.05)  # rescale matters


def test_negative_rescale_slope_reverses_minmax(tmp_path: Path) -> None:
    stored = phantom()
    image, _ = read_xray(write(tmp_path, stored, RescaleSlope=-1, RescaleIntercept=0))
    np.testing.assert_allclose(image, 1 - minmax(stored), atol=ATOL)


def lut_item(table: list[int], first: int, bits: int = 16, *, voi: bool = False) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(table), first, bits]
    if not voi:
        item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", table)  # LUT Data as US values
    return item


def test_modality_lut_sequence(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.uint16) + 100
    table = [(i * i) % 500 for i in range(8)]  # non-monotonic on purpose
    ds = make_ds(stored, WindowCenter=20, WindowWidth=30)
    ds.ModalityLUTSequence = Sequence([lut_item(table, first=100)])
    image, _ = read_xray(save(ds, tmp_path / "m.dcm"))
    modality = np.array(table, dtype=np.float64)[stored - 100]
    np.testing.assert_allclose(image, linear(modality, 20, 30), atol=ATOL)


def test_modality_lut_clamps_values_outside_the_table(tmp_path: Path) -> None:
    stored = np.array([[0, 5, 10, 11, 40]], dtype=np.uint16)
    ds = make_ds(stored, WindowCenter=25, WindowWidth=51)
    ds.ModalityLUTSequence = Sequence([lut_item([10, 20, 30], first=10)])
    image, _ = read_xray(save(ds, tmp_path / "m.dcm"))
    np.testing.assert_allclose(image, linear(np.array([[10, 10, 10, 20, 30]]), 25, 51), atol=ATOL)


def test_empty_lut_items_fall_back_to_rescale_and_window(tmp_path: Path) -> None:
    stored = phantom()
    ds = make_ds(
        stored, RescaleSlope=0.5, RescaleIntercept=100, WindowCenter=1200, WindowWidth=1000
    )
    empty = Dataset()
    empty.add_new(0x00283002, "US", None)
    empty.add_new(0x00283006, "OW", b"")
    ds.ModalityLUTSequence = Sequence([empty])
    ds.VOILUTSequence = Sequence([Dataset(empty)])
    image, meta = read_xray(save(ds, tmp_path / "e.dcm"))
    np.testing.assert_allclose(image, linear(stored * 0.5 + 100, 1200, 1000), atol=ATOL)
    assert meta.voi_source == "window"


# ---------------------------------------------------------------------------- VOI LUT
def test_voi_lut_sequence_used_when_there_is_no_window(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.uint16)
    table = [0, 4095, 1000, 2000, 3000, 500, 4095, 4095]
    ds = make_ds(stored)
    ds.VOILUTSequence = Sequence([lut_item(table, first=0, bits=12, voi=True)])
    image, meta = read_xray(save(ds, tmp_path / "v.dcm"))
    np.testing.assert_allclose(image, np.array(table)[stored] / 4095, atol=ATOL)
    assert meta.voi_source == "voi_lut" and meta.window is None


def test_voi_lut_after_rescale_and_window_wins_over_lut(tmp_path: Path) -> None:
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    table = [0, 100, 200, 255]
    ds = make_ds(stored, RescaleSlope=1, RescaleIntercept=10)
    ds.VOILUTSequence = Sequence([lut_item(table, first=10, bits=8, voi=True)])
    image, _ = read_xray(save(ds, tmp_path / "v.dcm"))
    np.testing.assert_allclose(image, np.array([table]) / 255, atol=ATOL)
    ds.WindowCenter, ds.WindowWidth = 12, 3
    image, meta = read_xray(save(ds, tmp_path / "w.dcm"))
    assert meta.voi_source == "window"
    np.testing.assert_allclose(image, linear(stored + 10, 12, 3), atol=ATOL)


# ---------------------------------------------------------------------------- inversion
def test_monochrome1_is_inverted_after_the_window(tmp_path: Path) -> None:
    stored = phantom()
    path = write(tmp_path, stored, photometric="MONOCHROME1", WindowCenter=2500, WindowWidth=1500)
    image, meta = read_xray(path)
    np.testing.assert_allclose(image, 1 - linear(stored, 2500, 1500), atol=ATOL)
    assert meta.photometric == "MONOCHROME1"


@pytest.mark.parametrize("with_window", [False, True])
@pytest.mark.parametrize("with_rescale", [False, True])
def test_monochrome1_and_monochrome2_encodings_read_the_same(
    tmp_path: Path, with_window: bool, with_rescale: bool
) -> None:
    """Required: the same phantom stored both ways reads back to the same image."""
    density = phantom()  # bright = dense, as MONOCHROME2 stores it
    top = 4095
    mono2: dict[str, Any] = {}
    mono1: dict[str, Any] = {}
    if with_window:
        mono2 |= {"WindowCenter": 2600, "WindowWidth": 1800}
        mono1 |= {"WindowCenter": top + 1 - 2600, "WindowWidth": 1800}
    if with_rescale:  # v = 2 * stored - 100 both ways
        mono2 |= {"RescaleSlope": 2, "RescaleIntercept": -100}
        mono1 |= {"RescaleSlope": 2, "RescaleIntercept": -100}
        if with_window:
            # v1 + v2 = 2 * top - 200 for every pixel, so 1 - LINEAR(v1; c1) = LINEAR(v2; c2)
            # when c1 = (2 * top - 200) - c2 + 1
            mono2["WindowCenter"] = 2 * 2600 - 100
            mono1["WindowCenter"] = (2 * top - 200) - mono2["WindowCenter"] + 1
            mono2["WindowWidth"] = mono1["WindowWidth"] = 3601
    img2, _ = read_xray(write(tmp_path, density, "m2.dcm", bits_stored=12, **mono2))
    img1, _ = read_xray(
        write(
            tmp_path,
            (top - density).astype(np.uint16),
            "m1.dcm",
            bits_stored=12,
            photometric="MONOCHROME1",
            **mono1,
        )
    )
    np.testing.assert_allclose(img1, img2, atol=1e-5)
    # bright = dense: the dense disc is brighter than the background in both
    assert img1[12, 10] > img1[2, 2] and img2[12, 10] > img2[2, 2]


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [
        ("MONOCHROME1", "INVERSE", True),  # what DX requires: one inversion, not two
        ("MONOCHROME1", "IDENTITY", True),  # contradictory: Photometric Interpretation wins
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME2", "INVERSE", False),  # contradictory: Photometric Interpretation wins
    ],
)
def test_presentation_lut_shape_restates_the_photometric_interpretation(
    tmp_path: Path, photometric: str, shape: str, inverted: bool
) -> None:
    stored = phantom()
    path = write(tmp_path, stored, photometric=photometric, PresentationLUTShape=shape)
    image, _ = read_xray(path)
    expected = 1 - minmax(stored) if inverted else minmax(stored)
    np.testing.assert_allclose(image, expected, atol=ATOL)


# ------------------------------------------------------------------------------ padding
def test_padding_value_is_zero_and_excluded_from_minmax(tmp_path: Path) -> None:
    stored = (phantom().astype(np.int16) - 1000).astype(np.int16)
    stored[:, :6] = -2000
    path = write(tmp_path, stored, PixelPaddingValue=-2000, RescaleSlope=1, RescaleIntercept=-1024)
    image, meta = read_xray(path)
    body = stored[:, 6:]
    assert np.all(image[:, :6] == 0.0)
    np.testing.assert_allclose(image[:, 6:], minmax(body), atol=ATOL)
    assert meta.padding_fraction == pytest.approx(6 / stored.shape[1])
    unmasked, _ = read_xray(write(tmp_path, stored, "nopad.dcm"))
    assert not np.allclose(unmasked[:, 6:], image[:, 6:], atol=0.05)


def test_padding_range_limit_and_monochrome1(tmp_path: Path) -> None:
    stored = phantom()
    stored[:4] = np.arange(stored.shape[1], dtype=np.uint16) % 5  # 0..4 = padding range
    path = write(
        tmp_path,
        stored,
        photometric="MONOCHROME1",
        PixelPaddingValue=4,
        PixelPaddingRangeLimit=0,
        WindowCenter=2500,
        WindowWidth=2000,
    )
    image, meta = read_xray(path)
    assert np.all(image[:4] == 0.0)  # padding is black after inversion, not white
    np.testing.assert_allclose(image[4:], 1 - linear(stored[4:], 2500, 2000), atol=ATOL)
    assert meta.padding_fraction == pytest.approx(4 / stored.shape[0])


# --------------------------------------------------------------------- bits and signs
def test_signed_pixels(tmp_path: Path) -> None:
    stored = (phantom().astype(np.int32) - 2048).astype(np.int16)
    path = write(tmp_path, stored, bits_stored=12, WindowCenter=-100, WindowWidth=1500)
    image, meta = read_xray(path)
    np.testing.assert_allclose(image, linear(stored, -100, 1500), atol=ATOL)
    assert meta.bits_stored == 12


def test_bits_above_bits_stored_are_ignored_like_pydicom(tmp_path: Path) -> None:
    clean = phantom()
    dirty = clean | np.uint16(0xA000)  # e.g. overlay bits in the unused high bits
    path = write(tmp_path, dirty, bits_stored=12)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, clean)
    image, _ = read_xray(path)
    np.testing.assert_allclose(image, minmax(clean), atol=ATOL)


def test_signed_12_bit_without_sign_extension(tmp_path: Path) -> None:
    values = np.array([[-2048, -5, 0, 7, 2047]], dtype=np.int16)
    raw = (values.astype(np.int32) & 0x0FFF).astype(np.int16)  # 12-bit two's complement
    path = write(tmp_path, raw, bits_stored=12)
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, values)
    image, _ = read_xray(path)
    np.testing.assert_allclose(image, minmax(values), atol=ATOL)


def test_eight_bit(tmp_path: Path) -> None:
    stored = (phantom() // 16).astype(np.uint8)
    image, meta = read_xray(write(tmp_path, stored))
    np.testing.assert_allclose(image, minmax(stored), atol=ATOL)
    assert meta.bits_stored == 8


def test_unsupported_bits_allocated(tmp_path: Path) -> None:
    ds = make_ds(phantom())
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.PixelData = phantom().astype(np.uint32).tobytes()
    with pytest.raises(DicomReadError, match=r"Bits Allocated 32 is not supported"):
        read_xray(save(ds, tmp_path / "b.dcm"))


# ----------------------------------------------------------------------------- colour
def test_rgb_and_ybr_become_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), dtype=np.uint8)
    rgb[..., 0] = np.arange(8)[:, None] * 30
    rgb[..., 1] = np.arange(8)[None, :] * 30
    rgb[..., 2] = 200
    expected = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255
    image, meta = read_xray(write(tmp_path, rgb, "rgb.dcm", photometric="RGB"))
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert meta.voi_source == "full_range" and meta.photometric == "RGB"
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    image, _ = read_xray(write(tmp_path, ybr, "ybr.dcm", photometric="YBR_FULL"))
    np.testing.assert_allclose(image, expected, atol=2 / 255)


def test_palette_colour(tmp_path: Path) -> None:
    index = np.arange(16, dtype=np.uint8).reshape(4, 4)
    ds = make_ds(index, photometric="PALETTE COLOR")
    red, green, blue = (
        (np.arange(16) * 4096).astype(np.uint16),
        np.zeros(16, np.uint16),
        (np.full(16, 65535, np.uint16)),
    )
    for colour, table in zip(("Red", "Green", "Blue"), (red, green, blue), strict=True):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [16, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", table.tobytes())
    image, meta = read_xray(save(ds, tmp_path / "p.dcm"))
    expected = (0.299 * red[index] + 0.114 * 65535.0) / 65535
    np.testing.assert_allclose(image, expected, atol=1e-5)
    assert meta.photometric == "PALETTE COLOR"


# ------------------------------------------------------------------------ compression
@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["j2k", "rle"])
def test_compressed_equals_uncompressed(tmp_path: Path, syntax: str) -> None:
    stored = phantom((64, 48))
    ds = make_ds(
        stored, bits_stored=12, photometric="MONOCHROME1", WindowCenter=2500, WindowWidth=1800
    )
    plain, _ = read_xray(save(ds, tmp_path / "plain.dcm"))
    ds.compress(syntax)
    packed, meta = read_xray(save(ds, tmp_path / "packed.dcm"))
    np.testing.assert_array_equal(packed, plain)
    assert meta.transfer_syntax == str(syntax)


@pytest.mark.parametrize("syntax", [None, RLELossless], ids=["native", "rle"])
def test_frame_selection(tmp_path: Path, syntax: str | None) -> None:
    frames = np.stack([phantom(seed=i) + 10 * i for i in range(3)]).astype(np.uint16)
    ds = make_ds(frames)
    if syntax:
        ds.compress(syntax)
    path = save(ds, tmp_path / "multi.dcm")
    for index in range(3):
        image, meta = read_xray(path, frame=index)
        np.testing.assert_allclose(image, minmax(frames[index]), atol=ATOL)
        assert (meta.frame, meta.n_frames) == (index, 3)
    first, _ = read_xray(path)
    np.testing.assert_array_equal(first, read_xray(path, frame=0)[0])
    with pytest.raises(DicomReadError, match=r"frame 3 requested but the file has 3 frame"):
        read_xray(path, frame=3)


# ---------------------------------------------------------------- sizes, bombs, checks
def _peak_bytes_of_refusal(path: Path, match: str, **options: Any) -> int:
    """Peak traced allocation while ``read_xray`` refuses ``path`` with ``match``."""
    tracemalloc.start()
    try:
        with pytest.raises(DicomReadError, match=match) as caught:
            read_xray(path, **options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value).startswith(f"{path}: ")
    return peak


def test_declared_huge_native_image_refused_before_allocating(tmp_path: Path) -> None:
    ds = make_ds(phantom((16, 16)))
    ds.Rows = ds.Columns = 60000
    path = save(ds, tmp_path / "bomb.dcm")
    assert _peak_bytes_of_refusal(path, r"Pixel Data holds 512 bytes") < 5_000_000


def test_max_pixels_is_enforced(tmp_path: Path) -> None:
    path = write(tmp_path, phantom((64, 64)))
    with pytest.raises(DicomReadError, match=r"exceed max_pixels=4,000"):
        read_xray(path, max_pixels=4000)
    assert read_xray(path, max_pixels=4096)[0].shape == (64, 64)


def test_compressed_bombs_refused_before_decoding(tmp_path: Path) -> None:
    ds = make_ds(phantom((64, 64)))
    ds.compress(JPEG2000Lossless)
    declared = copy.deepcopy(ds)
    declared.Rows = declared.Columns = 65535
    path = save(declared, tmp_path / "declared.dcm")
    with pytest.raises(DicomReadError, match=r"exceed max_pixels"):
        read_xray(path)
    # a codestream claiming 40000 x 40000 behind honest Rows/Columns
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    siz = frame.find(b"\xff\x4f\xff\x51")
    frame[siz + 8 : siz + 16] = struct.pack(">II", 40000, 40000)
    ds.PixelData = encapsulate([bytes(frame)])
    path = save(ds, tmp_path / "codestream.dcm")
    assert _peak_bytes_of_refusal(path, r"compressed frame is 40000x40000") < 5_000_000


def test_pixel_data_longer_than_declared_is_refused(tmp_path: Path) -> None:
    ds = make_ds(phantom((16, 16)))
    ds.Rows = 8  # pydicom would warn and return two 8 x 16 frames
    with pytest.raises(DicomReadError, match=r"smaller than the data"):
        read_xray(save(ds, tmp_path / "small.dcm"))


def test_odd_length_pixel_data_pad_byte_is_accepted(tmp_path: Path) -> None:
    stored = np.arange(15, dtype=np.uint8).reshape(3, 5)
    image, _ = read_xray(write(tmp_path, stored))  # 15 bytes, written with one pad byte
    np.testing.assert_allclose(image, minmax(stored), atol=ATOL)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"PhotometricInterpretation": None}, r"Photometric Interpretation \(0028,0004\)"),
        ({"PhotometricInterpretation": "CMYK"}, r"'CMYK' is not supported"),
        ({"SamplesPerPixel": 3}, r"Samples per Pixel is 3 but MONOCHROME2 needs 1"),
        ({"BitsStored": 20}, r"Bits Stored 20 is larger than Bits Allocated 16"),
        ({"PixelRepresentation": 2}, r"Pixel Representation is 2"),
        ({"Rows": None}, r"Rows is missing"),
        ({"PixelData": None}, r"no Pixel Data element"),
        ({"PixelData": b""}, r"Pixel Data element is empty"),
    ],
)
def test_pixel_module_problems_name_the_attribute(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    ds = make_ds(phantom((16, 16)))
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = save(ds, tmp_path / "bad.dcm")
    with pytest.raises(DicomReadError, match=message) as caught:
        read_xray(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_missing_decoder_names_syntax_and_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = make_ds(phantom((64, 64)))
    ds.compress(JPEG2000Lossless)
    path = save(ds, tmp_path / "j2k.dcm")

    class NoPlugins:
        is_available = False
        missing_dependencies = ("pylibjpeg - requires pylibjpeg-openjpeg",)

    monkeypatch.setattr(_dicom_pixels, "get_decoder", lambda uid: NoPlugins())
    with pytest.raises(UnsupportedCodecError) as caught:
        read_xray(path)
    text = str(caught.value)
    assert text.startswith(str(path))
    assert "JPEG 2000 Image Compression (Lossless Only)" in text
    assert "1.2.840.10008.1.2.4.90" in text and "pip install pylibjpeg pylibjpeg-openjpeg" in text


@pytest.mark.parametrize(
    ("uid", "name"),
    [("1.2.840.10008.1.2.4.110", "JPEG XL Lossless"), ("1.2.3.4.5", "not a registered")],
)
def test_unknown_or_undecodable_syntax(tmp_path: Path, uid: str, name: str) -> None:
    ds = make_ds(phantom((16, 16)))
    ds.file_meta.TransferSyntaxUID = uid
    ds.PixelData = encapsulate([b"\x00\x01" * 8])
    path = tmp_path / "odd.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True, force_encoding=True)
    with pytest.raises(UnsupportedCodecError, match=name) as caught:
        read_xray(path)
    assert uid in str(caught.value)


@pytest.mark.parametrize(
    "syntax", [None, RLELossless, JPEG2000Lossless], ids=["native", "rle", "j2k"]
)
def test_damaged_bytes_give_an_image_or_a_typed_error(tmp_path: Path, syntax: str | None) -> None:
    """Fuzz: truncations and byte flips anywhere never escape as another exception."""
    ds = make_ds(
        phantom((32, 32)),
        photometric="MONOCHROME1",
        WindowCenter=2500,
        WindowWidth=1500,
        RescaleSlope=1,
        RescaleIntercept=0,
    )
    if syntax:
        ds.compress(syntax)
    data = save(ds, tmp_path / "good.dcm").read_bytes()
    rng = np.random.default_rng(7)
    variants = [data[:cut] for cut in rng.integers(0, len(data), 40)]
    for _ in range(120):
        damaged = bytearray(data)
        for position in rng.integers(0, len(data), int(rng.integers(1, 6))):
            damaged[position] = int(rng.integers(0, 256))
        variants.append(bytes(damaged))
    for variant in variants:
        try:
            image, _ = read_xray(variant)
        except DicomReadError as exc:
            assert str(exc).startswith("<bytes>: ")
            continue
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert image.min() >= 0.0 and image.max() <= 1.0


# ---------------------------------------------------------------- malformed headers
def _patched(path: Path, keyword: str, new: bytes) -> Path:
    """Overwrite the value bytes of one explicit-VR element with ``new`` (same length).

    pydicom refuses to write malformed values, so they are written valid and patched.
    """
    tag = pydicom.datadict.tag_for_keyword(keyword)
    vr = pydicom.datadict.dictionary_VR(tag)
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    data = bytearray(path.read_bytes())
    start = data.index(header) + 8
    (length,) = struct.unpack("<H", data[start - 2 : start])
    assert data.count(header) == 1 and length == len(new)
    data[start : start + length] = new
    path.write_bytes(bytes(data))
    return path


def test_non_numeric_window_is_ignored(tmp_path: Path) -> None:
    stored = phantom()
    path = _patched(
        write(tmp_path, stored, WindowCenter="12345", WindowWidth="500"), "WindowCenter", b"abc.de"
    )
    image, meta = read_xray(path)
    assert meta.voi_source == "minmax" and meta.window_presets == ()
    np.testing.assert_allclose(image, minmax(stored), atol=ATOL)


def test_non_numeric_rescale_is_refused(tmp_path: Path) -> None:
    path = _patched(write(tmp_path, phantom(), RescaleSlope="7.25"), "RescaleSlope", b"x.yz")
    with pytest.raises(DicomReadError, match=r"RescaleSlope is 'x.yz', not a number"):
        read_xray(path)


def test_zero_rescale_slope_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DicomReadError, match=r"Rescale Slope is 0"):
        read_xray(write(tmp_path, phantom(), RescaleSlope=0))


def test_odd_text_and_bad_optional_fields_do_not_crash(tmp_path: Path) -> None:
    cyrillic = "Рентген".encode("cp1251") + b" "  # no Specific Character Set
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while writing the invalid values
        path = write(
            tmp_path,
            phantom(),
            Manufacturer="QQQQQQQ",
            PixelSpacing=[0.2],
            ImagerPixelSpacing=[0.15, 0.15],
            PatientAge="4X5Y",
            PatientSex="female",
            NumberOfFrames=1,
        )
    path = _patched(path, "Manufacturer", cyrillic)
    image, meta = read_xray(path)
    assert image.shape == (48, 40)
    assert isinstance(meta.manufacturer, str) and meta.manufacturer
    assert meta.pixel_spacing == (0.15, 0.15)  # Pixel Spacing has one value: skipped
    assert meta.age_band is None and meta.patient_sex is None


def test_invalid_number_of_frames_is_refused(tmp_path: Path) -> None:
    path = _patched(write(tmp_path, phantom(), NumberOfFrames="77"), "NumberOfFrames", b"-1")
    with pytest.raises(DicomReadError, match=r"NumberOfFrames is '-1'"):
        read_xray(path)


# --------------------------------------------------------------------------- metadata
ARCHITECTURE_FIELDS = (
    "modality",
    "view_position",
    "body_part",
    "photometric",
    "bits_stored",
    "pixel_spacing",
    "manufacturer",
    "manufacturer_model",
    "transfer_syntax",
    "original_shape",
    "n_frames",
    "frame",
    "window",
    "window_presets",
    "voi_source",
    "padding_fraction",
    "patient_sex",
    "age_band",
    "patient_hash",
)


def test_meta_has_exactly_the_contract_fields(tmp_path: Path) -> None:
    assert tuple(f.name for f in dataclasses.fields(XrayMeta)) == ARCHITECTURE_FIELDS
    path = write(
        tmp_path,
        phantom(),
        ViewPosition="PA",
        BodyPartExamined="CHEST",
        PatientSex="F",
        PatientAge="047Y",
        PatientID="P-1",
        Manufacturer="ACME",
        ManufacturerModelName="X1",
        ImagerPixelSpacing=[0.139, 0.14],
        WindowCenter=2000,
        WindowWidth=3000,
    )
    _, meta = read_xray(path, salt="s")
    assert meta.modality == "DX" and meta.view_position == "PA" and meta.body_part == "CHEST"
    assert meta.patient_sex == "F" and meta.age_band == "40-49"
    assert meta.pixel_spacing == (0.139, 0.14) and meta.original_shape == (48, 40)
    assert meta.manufacturer == "ACME" and meta.manufacturer_model == "X1"
    assert meta.transfer_syntax == ExplicitVRLittleEndian
    assert meta.patient_hash == patient_hash("P-1", "s") and len(meta.patient_hash) == 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.modality = "CT"  # type: ignore[misc]
    as_dict = meta.as_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["window_presets"] == [[2000.0, 3000.0]]


@pytest.mark.parametrize(
    ("age", "band"),
    [
        ("047Y", "40-49"),
        ("009Y", "0-9"),
        ("089Y", "80-89"),
        ("090Y", "90+"),
        ("104Y", "90+"),
        ("006M", "0-9"),
        ("030M", "0-9"),
        ("150M", "10-19"),
        ("003W", "0-9"),
        ("012D", "0-9"),
        ("", None),
        ("abc", None),
        ("47", None),
    ],
)
def test_age_band(tmp_path: Path, age: str, band: str | None) -> None:
    from medft.data._dicom_meta import age_band

    assert age_band(age) == band


def test_no_identifying_value_leaves_the_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    markers = {
        "PatientName": "ZZMARK^NAME",
        "PatientID": "ZZMARK-ID-4711",
        "PatientBirthDate": "19230405",
        "AccessionNumber": "ZZMARKACC",
        "InstitutionName": "ZZMARK Hospital",
        "InstitutionAddress": "ZZMARK street 1",
        "ReferringPhysicianName": "ZZMARK^DOC",
        "StudyDescription": "ZZMARK study",
        "StudyDate": "19990101",
        "OtherPatientIDs": "ZZMARK-OTHER",
    }
    path = write(tmp_path, phantom(), **markers)
    monkeypatch.delenv("MEDFT_PATIENT_SALT", raising=False)
    _, meta = read_xray(path)
    texts = [repr(meta), str(meta), json.dumps(meta.as_dict()), repr(meta.as_dict())]
    for text in texts:
        assert "ZZMARK" not in text
        for value in ("19230405", "19990101", "4711"):
            assert value not in text
    default = meta.patient_hash
    assert default == patient_hash("ZZMARK-ID-4711")
    assert read_xray(path, salt="site-secret")[1].patient_hash != default
    monkeypatch.setenv("MEDFT_PATIENT_SALT", "from-env")
    assert read_xray(path)[1].patient_hash == patient_hash("ZZMARK-ID-4711", "from-env")
    assert read_xray(write(tmp_path, phantom(), "anon.dcm"))[1].patient_hash is None


# ---------------------------------------------------------------- sources and options
def test_bytes_file_objects_and_paths(tmp_path: Path) -> None:
    path = write(tmp_path, phantom(), WindowCenter=2500, WindowWidth=1500)
    expected, _ = read_xray(path)
    np.testing.assert_array_equal(read_xray(str(path))[0], expected)
    np.testing.assert_array_equal(read_xray(path.read_bytes())[0], expected)
    np.testing.assert_array_equal(read_xray(io.BytesIO(path.read_bytes()))[0], expected)
    with path.open("rb") as handle:
        np.testing.assert_array_equal(read_xray(handle)[0], expected)

    class OneWay(io.RawIOBase):  # a non-seekable upload stream
        def __init__(self, data: bytes) -> None:
            self._inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self._inner.readinto(buffer)

    np.testing.assert_array_equal(read_xray(OneWay(path.read_bytes()))[0], expected)
    with pytest.raises(DicomReadError, match=r"^<bytes>: not a DICOM file"):
        read_xray(b"hello, not an image" * 20)
    with pytest.raises(DicomReadError, match=r"not a path, bytes or binary file object"):
        read_xray(12345)  # type: ignore[arg-type]


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DicomReadError, match=r"nope\.dcm: file not found"):
        read_xray(tmp_path / "nope.dcm")
    with pytest.raises(DicomReadError, match=r"is a directory"):
        read_xray(tmp_path)


def _bare(path: Path) -> bytes:
    """The data set of a Part 10 file without preamble, 'DICM' and File Meta."""
    data = path.read_bytes()
    (meta_length,) = struct.unpack("<I", data[140:144])
    return data[144 + meta_length :]


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_bare_data_set_without_file_meta(tmp_path: Path, syntax: str) -> None:
    ds = make_ds(phantom(), WindowCenter=2500, WindowWidth=1500)
    ds.file_meta.TransferSyntaxUID = syntax
    path = save(ds, tmp_path / "part10.dcm")
    expected, _ = read_xray(path)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(_bare(path))
    image, meta = read_xray(bare)
    np.testing.assert_array_equal(image, expected)
    assert meta.transfer_syntax == syntax


def test_bare_data_set_with_compressed_pixels_is_refused(tmp_path: Path) -> None:
    ds = make_ds(phantom())
    ds.compress(RLELossless)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(_bare(save(ds, tmp_path / "part10.dcm")))
    with pytest.raises(DicomReadError, match=r"Pixel Data is compressed, so the codec is unknown"):
        read_xray(bare)


@pytest.mark.parametrize(
    "options",
    [
        {"voi": "window"},
        {"voi": (100, 0)},
        {"voi": (100, float("nan"))},
        {"voi": (1, 2, 3)},
        {"frame": -1},
        {"frame": 1.5},
        {"max_pixels": 0},
        {"max_pixels": True},
    ],
)
def test_invalid_options_are_config_errors(tmp_path: Path, options: dict[str, Any]) -> None:
    path = write(tmp_path, phantom())
    with pytest.raises(ConfigError):
        read_xray(path, **options)


def test_threads_read_in_parallel_and_leave_warning_filters_alone(tmp_path: Path) -> None:
    paths = [
        write(tmp_path, phantom(seed=i), f"{i}.dcm", WindowCenter=2500, WindowWidth=1500)
        for i in range(8)
    ]
    serial = [read_xray(p)[0] for p in paths]
    filters = list(warnings.filters)
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: read_xray(p)[0], paths * 3))
    for index, image in enumerate(parallel):
        np.testing.assert_array_equal(image, serial[index % len(paths)])
    assert warnings.filters == filters


# ---------------------------------------------------------------------- raster files
def _save_image(array: np.ndarray, path: Path, **kw: Any) -> Path:
    Image.fromarray(array).save(path, **kw)
    return path


def test_png_8_and_16_bit_use_their_nominal_range(tmp_path: Path) -> None:
    eight = (phantom() // 16).astype(np.uint8)
    image, meta = read_image(_save_image(eight, tmp_path / "a.png"))
    np.testing.assert_allclose(image, eight / 255, atol=ATOL)
    assert (meta.transfer_syntax, meta.bits_stored, meta.voi_source) == ("PNG", 8, "full_range")
    sixteen = phantom() * 16
    image, meta = read_image(_save_image(sixteen, tmp_path / "b.png"))
    np.testing.assert_allclose(image, sixteen / 65535, atol=ATOL)
    assert meta.bits_stored == 16 and meta.patient_hash is None
    image, _ = read_image(tmp_path / "b.png", voi="none")
    np.testing.assert_allclose(image, minmax(sixteen), atol=ATOL)
    with pytest.raises(DicomReadError, match=r"48x40x1 samples exceed max_pixels=1,000"):
        read_image(tmp_path / "b.png", max_pixels=1000)


def test_colour_jpeg_becomes_gray_and_tiff_pages_are_frames(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 40
    image, meta = read_image(_save_image(rgb, tmp_path / "c.jpg", quality=95))
    assert image.shape == (32, 32) and meta.photometric == "RGB"
    np.testing.assert_allclose(image, (0.299 * 200 + 0.114 * 40) / 255, atol=0.02)
    pages = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (10, 200)]
    tiff = tmp_path / "pages.tif"
    pages[0].save(tiff, save_all=True, append_images=pages[1:])
    image, meta = read_image(tiff, frame=1)
    assert meta.n_frames == 2 and np.allclose(image, 200 / 255)
    with pytest.raises(DicomReadError, match=r"frame 2 requested but the file has 2 frame"):
        read_image(tiff, frame=2)


def test_load_image_sniffs_content_not_names(tmp_path: Path) -> None:
    png = _save_image((phantom() // 16).astype(np.uint8), tmp_path / "p.png")
    disguised = tmp_path / "really_png.dcm"
    disguised.write_bytes(png.read_bytes())
    dicom = write(tmp_path, phantom(), "d.dcm")
    named_png = tmp_path / "really_dicom.png"
    named_png.write_bytes(dicom.read_bytes())
    np.testing.assert_array_equal(load_image(disguised)[0], read_image(png)[0])
    np.testing.assert_array_equal(load_image(named_png)[0], read_xray(dicom)[0])
    with pytest.raises(DicomReadError, match=r"it is a PNG image \(use load_image or read_image\)"):
        read_xray(disguised)
    with pytest.raises(DicomReadError, match=r"is a DICOM file; use read_xray or load_image"):
        read_image(dicom)
    text = tmp_path / "notes.txt"
    text.write_text("not an image at all\n" * 20)
    with pytest.raises(DicomReadError, match=r"neither a DICOM file nor a PNG"):
        load_image(text)
    assert is_dicom(named_png) and not is_dicom(disguised) and not is_dicom(text)
    assert not is_dicom(tmp_path / "missing.dcm")


def test_truncated_png_is_a_read_error(tmp_path: Path) -> None:
    png = _save_image(
        np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), tmp_path / "t.png"
    )
    png.write_bytes(png.read_bytes()[:300])
    with pytest.raises(DicomReadError, match=r"t\.png: .*truncated or corrupt"):
        read_image(png)


# ----------------------------------------------------------- the renderer on its own
def test_fused_and_stepwise_rendering_agree() -> None:
    """The one-pass affine route and the general stepwise route give the same image."""
    stored = phantom().astype(np.int16) - 500
    window = Window(center=900.0, width=1700.0)
    for invert in (False, True):
        fast = render(stored, DisplayPlan(Affine(1.5, -20.0), window, invert)).image
        lut = Lut(
            table=np.arange(-4096, 8192, dtype=np.float32) * 1.5 - 20, first=-4096, out_max=1.0
        )
        slow = render(stored, DisplayPlan(lut, window, invert)).image
        np.testing.assert_allclose(fast, slow, atol=1e-5)
        assert fast.min() >= 0.0 and fast.max() <= 1.0


def test_rle_data_that_happens_to_hold_j2k_marker_bytes_decodes(tmp_path) -> None:
    """Regression: a size check once searched any codestream for the J2K SOC+SIZ bytes and
    refused about 10% of valid RLE files whose segments contained them by chance."""
    import numpy as np
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

    from medft.data.dicom import read_xray

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(32, 32), dtype=np.uint8)
    pixels[5, :12] = [0xFF, 0x4F, 0xFF, 0x51, 1, 2, 3, 4, 5, 6, 7, 8]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    ds.compress(RLELossless, pixels)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert b"\xff\x4f\xff\x51" in pydicom.dcmread(path).PixelData
    image, _ = read_xray(path)
    assert image.shape == (32, 32)
    expected = (pixels.astype(np.float32) - pixels.min()) / (pixels.max() - pixels.min())
    assert np.allclose(image, expected, atol=1e-6)


def _jp2_wrapped(codestream: bytes, rows: int, columns: int, bits: int, *, broken: bool) -> bytes:
    """A JP2 file around ``codestream``: signature, 'ftyp', 'jp2h' (ihdr, colr), then 'jp2c'."""
    signature = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    ftyp = struct.pack(">I", 20) + b"ftypjp2 " + b"\x00\x00\x00\x00" + b"jp2 "
    ihdr = struct.pack(">I4sIIHBBBB", 22, b"ihdr", rows, columns, 1, bits - 1, 7, 0, 0)
    colr = struct.pack(">I4sBBBI", 15, b"colr", 1, 0, 0, 17)  # enumerated: greyscale
    length = 0 if broken else 8 + len(ihdr) + len(colr)  # 0: pydicom's search never moves on
    header = struct.pack(">I", length) + b"jp2h" + ihdr + colr
    return signature + ftyp + header + struct.pack(">I", 8 + len(codestream)) + b"jp2c" + codestream


@pytest.mark.parametrize("broken", [False, True], ids=["jp2", "jp2_zero_length_box"])
def test_jp2_wrapped_frame_decodes_or_is_refused_without_hanging(tmp_path, broken) -> None:
    """pydicom 3.0 loops forever on a JP2 box of length 0 (found by the atheris fuzzer)."""
    import signal

    pixels = phantom((32, 32))
    ds = make_ds(pixels)
    ds.compress(JPEG2000Lossless)
    (codestream,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    wrapped = _jp2_wrapped(codestream, ds.Rows, ds.Columns, ds.BitsStored, broken=broken)
    ds.PixelData = encapsulate([wrapped])
    path = save(ds, tmp_path / "jp2.dcm")

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError("read_xray did not return within 20 s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        if broken:
            with pytest.raises(DicomReadError, match="box at byte 32 declares a length of 0"):
                read_xray(path)
        else:
            image, _ = read_xray(path, voi="none")
            np.testing.assert_allclose(image, minmax(pixels.astype(np.float64)), atol=1e-6)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
