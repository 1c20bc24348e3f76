"""The DICOM reader on real-world files: every row of tests/data/corpus/corpus.csv, and every
image file that ships with pydicom. Each must decode to a valid image or be refused with a
typed error that names the file, quickly and without a large allocation.
"""

from __future__ import annotations

import csv
import hashlib
import re
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medft.data.dicom import read_xray
from medft.errors import DicomReadError, UnsupportedCodecError
from tests.conftest import CORPUS

pytestmark = pytest.mark.timeout(120)

SECONDS_PER_FILE = 20.0  # the biggest corpus file decodes in well under 1 s here


def _corpus_rows() -> list[dict[str, str]]:
    """Rows of corpus.csv, read at collection time (a missing table fails collection)."""
    with (CORPUS / "corpus.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


ROWS = _corpus_rows()
ROW_IDS = [row["file"] for row in ROWS]

# Where medft deliberately differs from bare pydicom (corpus `expect`), and why.
DEVIATIONS = {
    # pydicom warns and returns two 8x16 frames; the header is inconsistent with the data
    "corrupt/rows_cols_too_small.dcm": ("invalid", r"smaller than the data"),
    # a bare data set without File Meta: the reader detects its encoding and decodes it
    "corrupt/no_file_meta.dcm": ("decodes", None),
}

# The reason each invalid file is refused with (a fragment of the message).
INVALID_REASONS = {
    "dicom/ct_no_file_meta.dcm": r"not a DICOM file",
    "dicom/nm_u16s12_jpeg_extended_bad_sos.dcm": r"could not be decoded as 'JPEG Extended",
    "corrupt/DICOMDIR": r"no Pixel Data element \(SOP class 'Media Storage Directory Storage'\)",
    "corrupt/bogus_bits_allocated.dcm": r"Bits Allocated 13 is not supported",
    "corrupt/huge_dims_declared.dcm": r"Pixel Data holds 512 bytes but 65535x65535",
    "corrupt/missing_photometric.dcm": r"Photometric Interpretation \(0028,0004\) is missing",
    "corrupt/no_pixeldata.dcm": r"no Pixel Data element",
    "corrupt/png_renamed.dcm": r"it is a PNG image",
    "corrupt/preamble_only.dcm": r"no data set after the File Meta",
    "corrupt/random_bytes.dcm": r"not a DICOM file",
    "corrupt/rows_cols_too_large.dcm": r"Pixel Data holds 512 bytes but 32x32",
    "corrupt/rows_cols_too_small.dcm": r"smaller than the data",
    "corrupt/text_file.dcm": r"not a DICOM file",
    "corrupt/truncated_file_meta.dcm": r"empty or truncated",
    "corrupt/truncated_header.dcm": r"no Pixel Data element .*truncated",
    "corrupt/truncated_pixeldata_encapsulated.dcm": r"empty or truncated",
    "corrupt/truncated_pixeldata_native.dcm": r"Pixel Data holds 411 bytes .* truncated",
    "corrupt/x.dcm": r"is a directory",
    "corrupt/zero_bytes.dcm": r"empty file \(0 bytes\)",
}

_DECODED = re.compile(r"\((\d+), (\d+)(?:, (\d+))?\)")


def _expected_shape(row: dict[str, str]) -> tuple[int, int]:
    """(rows, columns) of one frame from the corpus `decoded` column (pydicom's array)."""
    dims = [int(d) for d in _DECODED.search(row["decoded"]).groups() if d]
    frames = int(row["frames"] or 1)
    if frames > 1:
        dims = dims[1:]
    return (dims[0], dims[1])


def _read_timed(path: Path) -> tuple[np.ndarray, object]:
    start = time.perf_counter()
    try:
        return read_xray(path)
    finally:
        assert time.perf_counter() - start < SECONDS_PER_FILE


# SHA-256 of the raw PneumoniaMNIST arrays (``arr.tobytes()``), as pneumoniamnist/ATTRIBUTION.md
# records them.
PNEUMONIAMNIST_SHA256 = {
    "test_images": "f936e3b6b29d2ed7a8182dd090c27504a6b7152ce496a960db0169622aabf843",
    "test_labels": "13c6ece2a1da60187a0129e7a1b66c685dcbcffe8229225cb5e48e5ee12cfd3d",
}
LICENCE_FILES = {
    "highdicom.LICENSE.txt",
    "pydicom-data.LICENSE.txt",
    "pydicom-test_files-README.txt",
    "pydicom.LICENSE.txt",
    "pylibjpeg-data.LICENSE.txt",
}


def test_corpus_present_and_intact(corpus_dir: Path) -> None:
    """The corpus is in the repository and complete: no test may skip for want of it."""
    assert corpus_dir == CORPUS
    assert len(ROWS) == 59
    for row in ROWS:
        path = corpus_dir / row["file"]
        if row["sha256"]:
            assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], row["file"]
            assert path.stat().st_size == int(row["bytes"]), row["file"]
        else:  # the directory corrupt/x.dcm, kept by git through its .gitkeep
            assert path.is_dir() and (path / ".gitkeep").is_file(), row["file"]
    on_disk = {
        f"{folder}/{p.name}"
        for folder in ("dicom", "corrupt")
        for p in (corpus_dir / folder).iterdir()
    }
    assert on_disk == {row["file"] for row in ROWS}, "files in the corpus but not in corpus.csv"


def test_pneumoniamnist_sample_and_licences_present(corpus_dir: Path) -> None:
    folder = corpus_dir / "pneumoniamnist"
    with np.load(folder / "pneumoniamnist_test.npz") as arrays:
        for key, digest in PNEUMONIAMNIST_SHA256.items():
            assert hashlib.sha256(arrays[key].tobytes()).hexdigest() == digest, key
        labels = arrays["test_labels"].ravel()
    with (folder / "labels.csv").open(newline="", encoding="utf-8") as handle:
        listed = [int(row["label"]) for row in csv.DictReader(handle)]
    assert listed == labels.tolist() and len(listed) == 624
    assert "CC BY 4.0" in (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")
    present = {p.name for p in (corpus_dir / "LICENSES").iterdir()}
    assert present == LICENCE_FILES
    assert all((corpus_dir / "LICENSES" / name).stat().st_size > 500 for name in present)


@pytest.mark.parametrize("row", ROWS, ids=ROW_IDS)
def test_corpus_file(corpus_dir: Path, row: dict[str, str]) -> None:
    path = corpus_dir / row["file"]
    expect, reason = DEVIATIONS.get(row["file"], (row["expect"], None))
    if expect == "decodes":
        image, meta = _read_timed(path)
        assert image.dtype == np.float32 and image.ndim == 2
        assert np.isfinite(image).all()
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert image.max() > image.min(), "a decoded image should not be flat"
        if row["decoded"]:
            assert image.shape == _expected_shape(row)
        assert meta.original_shape == image.shape
    elif expect == "unsupported_codec":
        with pytest.raises(UnsupportedCodecError) as caught:
            _read_timed(path)
        assert row["transfer_syntax_uid"] in str(caught.value)
        assert str(caught.value).startswith(f"{path}: ")
    else:
        assert expect == "invalid"
        with pytest.raises(DicomReadError) as caught:
            _read_timed(path)
        assert not isinstance(caught.value, UnsupportedCodecError)
        assert str(caught.value).startswith(f"{path}: ")
        assert re.search(reason or INVALID_REASONS[row["file"]], str(caught.value))


def test_declared_bomb_allocates_nothing_large(corpus_dir: Path) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DicomReadError):
            read_xray(corpus_dir / "corrupt/huge_dims_declared.dcm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


def test_six_transfer_syntaxes_give_identical_images(corpus_dir: Path) -> None:
    names = ["explvr", "explvr_big_endian", "implvr", "j2k_lossless", "jpegls_lossless", "rle"]
    images = [read_xray(corpus_dir / f"dicom/mr_s16_{n}.dcm")[0] for n in names]
    for image in images[1:]:
        np.testing.assert_array_equal(image, images[0])


def test_ten_frames_native_and_rle_agree_frame_by_frame(corpus_dir: Path) -> None:
    native = corpus_dir / "dicom/mr_u16s12_10frames_explvr.dcm"
    rle = corpus_dir / "dicom/mr_u16s12_10frames_rle.dcm"
    raw = pydicom.dcmread(native).pixel_array
    for frame in (0, 4, 9):
        a, meta = read_xray(native, frame=frame)
        b, _ = read_xray(rle, frame=frame)
        np.testing.assert_array_equal(a, b)
        assert (meta.frame, meta.n_frames) == (frame, 10)
        values = raw[frame].astype(np.float64)
        np.testing.assert_allclose(
            a, (values - values.min()) / (values.max() - values.min()), atol=1e-6
        )
    with pytest.raises(DicomReadError, match=r"frame 10 requested but the file has 10"):
        read_xray(rle, frame=10)


def test_lossy_and_lossless_j2k_of_one_radiograph_are_close(corpus_dir: Path) -> None:
    lossless, meta = read_xray(corpus_dir / "dicom/cr_mono1_u16s10_j2k_lossless_anon.dcm")
    lossy, _ = read_xray(corpus_dir / "dicom/cr_mono1_u16s10_j2k_lossy_anon.dcm")
    assert float(np.abs(lossless - lossy).mean()) < 0.01
    assert meta.photometric == "MONOCHROME1" and meta.voi_source == "window"


def test_empty_lut_sequences_read_like_their_source(corpus_dir: Path) -> None:
    """pydicom's own apply_modality_lut raises TypeError on this file; empty LUT = no LUT."""
    source, _ = read_xray(corpus_dir / "dicom/cr_mono1_u16s12_explvr_rescale_16x16.dcm")
    trap, meta = read_xray(corpus_dir / "corrupt/empty_lut_sequences.dcm")
    np.testing.assert_array_equal(trap, source)
    assert meta.voi_source == "window"


def test_no_file_meta_reads_like_its_source(corpus_dir: Path) -> None:
    source, _ = read_xray(corpus_dir / "dicom/cr_mono1_u16s12_explvr_rescale_16x16.dcm")
    bare, meta = read_xray(corpus_dir / "corrupt/no_file_meta.dcm")
    np.testing.assert_array_equal(bare, source)
    assert meta.transfer_syntax == "1.2.840.10008.1.2.1"


def test_big_endian_data_set_without_file_meta(corpus_dir: Path) -> None:
    path = corpus_dir / "dicom/mr_s16_explvr_big_endian.dcm"
    data = path.read_bytes()
    (meta_length,) = struct.unpack("<I", data[140:144])
    image, meta = read_xray(data[144 + meta_length :])
    np.testing.assert_array_equal(image, read_xray(path)[0])
    assert meta.transfer_syntax == "1.2.840.10008.1.2.2"


def test_cr_monochrome1_with_rescale_follows_the_formula(corpus_dir: Path) -> None:
    """Stored -> rescale (0.684, 200) -> window (1600, 2800) LINEAR -> inverted."""
    path = corpus_dir / "dicom/cr_mono1_u16s12_explvr_rescale_16x16.dcm"
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    modality = stored * 0.684 + 200
    window = np.clip((modality - (1600 - 0.5)) / (2800 - 1) + 0.5, 0, 1)
    image, _ = read_xray(path)
    np.testing.assert_allclose(image, 1 - window, atol=1e-5)


def test_monochrome1_with_inverse_shape_is_inverted_once(corpus_dir: Path) -> None:
    """dx_mono1_u8_explvr is MONOCHROME1 *and* Presentation LUT Shape INVERSE (as DX
    requires): one inversion, so bone (high attenuation, low stored values) is bright."""
    path = corpus_dir / "dicom/dx_mono1_u8_explvr.dcm"
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
    window = np.clip((stored - (128 - 0.5)) / (256 - 1) + 0.5, 0, 1)
    image, _ = read_xray(path)
    np.testing.assert_allclose(image, 1 - window, atol=1e-5)


def test_window_that_misses_the_data_is_skipped(corpus_dir: Path) -> None:
    """This DX header's window (2725/5310) lies below every stored value (32744..65535):
    applied literally the whole image would be white."""
    image, meta = read_xray(corpus_dir / "dicom/dx_mono2_u16s16_chest_j2k_lossless_anon.dcm")
    assert meta.window_presets == ((2725.0, 5310.0),)
    assert meta.voi_source == "minmax" and image.std() > 0.1


def test_anonymised_files_leak_nothing(corpus_dir: Path) -> None:
    for row in ROWS:
        if "anonymised_copy" not in row["features"]:
            continue
        path = corpus_dir / row["file"]
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        _, meta = read_xray(path)
        text = repr(meta)
        assert str(ds.PatientID) not in text
        assert meta.patient_hash and len(meta.patient_hash) == 16


# ------------------------------------------------------------------ pydicom's test files
def _pydicom_files() -> list[Path]:
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in ("", ".dcm"))


PYDICOM_FILES = _pydicom_files()
_PYDICOM_ROOT = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize(
    "path", PYDICOM_FILES, ids=[str(p.relative_to(_PYDICOM_ROOT)) for p in PYDICOM_FILES]
)
def test_every_pydicom_test_file_reads_or_is_refused_cleanly(path: Path) -> None:
    try:
        image, meta = _read_timed(path)
    except DicomReadError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    assert image.dtype == np.float32 and image.ndim == 2 and np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.shape == meta.original_shape


@pytest.mark.parametrize("name", ["6154", "6247", "6278"])
def test_pydicom_cr_monochrome1_images(name: str) -> None:
    """pydicom's CR images are MONOCHROME1: the reader inverts after rescale and window."""
    path = pydicom.data.get_testdata_file(name, download=False)
    assert path is not None
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    modality = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    window = np.clip((modality - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    image, meta = read_xray(path)
    np.testing.assert_allclose(image, 1 - window, atol=1e-5)
    assert meta.modality == "CR" and meta.photometric == "MONOCHROME1"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("rtdose.dcm", r"Bits Allocated 32 is not supported"),
        ("MR_truncated.dcm", r"Pixel Data holds .* truncated"),
        ("meta_missing_tsyntax.dcm", r"Transfer Syntax UID|no Pixel Data"),
    ],
)
def test_pydicom_files_refused_for_a_stated_reason(name: str, message: str) -> None:
    path = pydicom.data.get_testdata_file(name, download=False)
    with pytest.raises(DicomReadError, match=message):
        read_xray(path)


def test_pydicom_multiframe_colour_frame_selection() -> None:
    path = pydicom.data.get_testdata_file("examples_ybr_color.dcm", download=False)
    first, meta = read_xray(path)
    last, _ = read_xray(path, frame=29)
    assert meta.n_frames == 30 and first.shape == last.shape == (240, 320)
    assert not np.array_equal(first, last)
