#!/usr/bin/env python3
"""Derive the adversarial files in corrupt/ from files in dicom/ (deterministic).

Run from anywhere:  python make_corrupt.py  [--out corrupt]
Needs pydicom (3.x). Re-running rewrites corrupt/ with byte-identical output for the
same pydicom version (only DICOMDIR's implementation UID/version depend on it).

CASES maps each output name to (source file in dicom/ or None, description); the
description becomes the `note` column of corpus.csv (make_corpus_csv.py).
"""

from __future__ import annotations

import argparse
import random
import shutil
import struct
import uuid
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
DICOM = HERE / "dicom"

CR16 = "cr_mono1_u16s12_explvr_rescale_16x16.dcm"  # native, 512 bytes of pixel data
MR = "mr_s16_explvr.dcm"  # native 64x64 signed 16-bit
MRJ2K = "mr_s16_j2k_lossless.dcm"  # encapsulated JPEG 2000, 6 KB
DX8 = "dx_mono1_u8_explvr.dcm"

UNKNOWN_TS = "1.2.3.4.5.6.7.8.9"  # not a registered transfer syntax

CASES = {
    "zero_bytes.dcm": (None, "empty file (0 bytes)"),
    "png_renamed.dcm": (None, "a valid 16x16 greyscale PNG named .dcm"),
    "text_file.dcm": (None, "plain UTF-8 text named .dcm"),
    "random_bytes.dcm": (None, "4096 pseudo-random bytes (random.Random(20240601))"),
    "preamble_only.dcm": (
        None,
        "128-byte zero preamble + 'DICM' and nothing else; "
        "pydicom reads it without error as an empty dataset",
    ),
    "no_file_meta.dcm": (
        CR16,
        "preamble, 'DICM' and File Meta removed: a bare Explicit "
        "VR Little Endian dataset; dcmread needs force=True and "
        "pixel_array then needs the reader to set a Transfer Syntax "
        "(decodes once file_meta.TransferSyntaxUID is set)",
    ),
    "truncated_file_meta.dcm": (
        CR16,
        "cut inside the File Meta Information group; "
        "pydicom reads it without error (4 meta elements, "
        "empty dataset)",
    ),
    "truncated_header.dcm": (
        CR16,
        "cut inside the main dataset, before Pixel Data; "
        "pydicom reads the first 35 elements without error or "
        "warning, only pixel_array fails",
    ),
    "truncated_pixeldata_native.dcm": (
        CR16,
        "native Pixel Data cut short by 101 bytes (element length still says 512)",
    ),
    "truncated_pixeldata_encapsulated.dcm": (
        MRJ2K,
        "JPEG 2000 file cut at 60% of its "
        "length, inside the encapsulated fragment; "
        "pydicom 3.0.2 only warns and returns an "
        "EMPTY dataset (every element lost)",
    ),
    "no_pixeldata.dcm": (DX8, "valid DX header, Pixel Data element removed"),
    "rows_cols_too_large.dcm": (
        CR16,
        "Rows/Columns set to 32x32, data is 16x16 (too little pixel data)",
    ),
    "rows_cols_too_small.dcm": (
        CR16,
        "Rows set to 8, data is 16x16 (excess pixel data); "
        "pydicom only warns and returns 2 frames of 8x16 - a "
        "reader should reject or at least flag it",
    ),
    "huge_dims_declared.dcm": (
        CR16,
        "Rows=Columns=65535 declared over 512 bytes of data "
        "(a reader must not allocate 8 GiB first)",
    ),
    "unknown_transfer_syntax.dcm": (
        MR,
        f"Transfer Syntax UID set to unregistered {UNKNOWN_TS}; dataset bytes unchanged",
    ),
    "bogus_bits_allocated.dcm": (MR, "BitsAllocated=13 (BitsStored 16, HighBit 15)"),
    "missing_photometric.dcm": (MR, "Photometric Interpretation removed"),
    "empty_lut_sequences.dcm": (
        CR16,
        "Modality LUT Sequence and VOI LUT Sequence items "
        "with empty LUT Descriptor/Data, alongside Rescale "
        "Slope/Intercept (pattern seen in real exports); "
        "pixel_array decodes, LUT application must not crash",
    ),
    "x.dcm": (None, "a DIRECTORY named x.dcm (holds only .gitkeep so git keeps it)"),
    "DICOMDIR": (None, "valid, empty DICOMDIR (Media Storage Directory; no Pixel Data)"),
}


def png_bytes(w=16, h=16) -> bytes:
    raw = b"".join(b"\x00" + bytes((x * 16 + y) % 256 for x in range(w)) for y in range(h))

    def chunk(tag, data):
        return (
            struct.pack(">I", len(data))
            + tag
            + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def read(name):
    import pydicom

    return pydicom.dcmread(DICOM / name)


def save(ds, path):
    ds.save_as(path, enforce_file_format=False)


def offsets(name):
    """(end of file meta, offset of the Pixel Data tag) for a Part 10 file."""
    data = (DICOM / name).read_bytes()
    meta_len = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL value
    return 144 + meta_len, data.rfind(b"\xe0\x7f\x10\x00")


def build(out: Path):
    from pydicom.dataset import Dataset
    from pydicom.fileset import FileSet
    from pydicom.sequence import Sequence

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    w = lambda n, b: (out / n).write_bytes(b)  # noqa: E731

    w("zero_bytes.dcm", b"")
    w("png_renamed.dcm", png_bytes())
    w("text_file.dcm", b"This is not a DICOM file.\nPatient: nobody\n")
    w("random_bytes.dcm", random.Random(20240601).randbytes(4096))
    w("preamble_only.dcm", b"\x00" * 128 + b"DICM")

    cr = (DICOM / CR16).read_bytes()
    meta_end, px = offsets(CR16)
    w("no_file_meta.dcm", cr[meta_end:])
    w("truncated_file_meta.dcm", cr[: 132 + (meta_end - 132) // 2])
    w("truncated_header.dcm", cr[: (meta_end + px) // 2])
    w("truncated_pixeldata_native.dcm", cr[:-101])
    j2k = (DICOM / MRJ2K).read_bytes()
    w("truncated_pixeldata_encapsulated.dcm", j2k[: len(j2k) * 6 // 10])

    ds = read(DX8)
    del ds.PixelData
    save(ds, out / "no_pixeldata.dcm")

    ds = read(CR16)
    ds.Rows, ds.Columns = 32, 32
    save(ds, out / "rows_cols_too_large.dcm")
    ds = read(CR16)
    ds.Rows = 8
    save(ds, out / "rows_cols_too_small.dcm")
    ds = read(CR16)
    ds.Rows, ds.Columns = 65535, 65535
    save(ds, out / "huge_dims_declared.dcm")

    ds = read(MR)
    ds.file_meta.TransferSyntaxUID = UNKNOWN_TS
    save(ds, out / "unknown_transfer_syntax.dcm")
    ds = read(MR)
    ds.BitsAllocated = 13
    save(ds, out / "bogus_bits_allocated.dcm")
    ds = read(MR)
    del ds.PhotometricInterpretation
    save(ds, out / "missing_photometric.dcm")

    ds = read(CR16)
    item = Dataset()
    item.add_new(0x00283002, "US", None)  # LUT Descriptor, zero length
    item.add_new(0x00283004, "LO", "")  # Modality LUT Type, zero length
    item.add_new(0x00283006, "OW", b"")  # LUT Data, zero length
    ds.ModalityLUTSequence = Sequence([item])
    vitem = Dataset()
    vitem.add_new(0x00283002, "US", None)
    vitem.add_new(0x00283006, "OW", b"")
    ds.VOILUTSequence = Sequence([vitem])
    save(ds, out / "empty_lut_sequences.dcm")

    (out / "x.dcm").mkdir()
    (out / "x.dcm" / ".gitkeep").write_bytes(b"")

    fs = FileSet()
    fs.ID = "MEDFTCORRUPT"
    # fixed UUID-derived UID (2.25 root), so the output is deterministic
    fs.UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "medft/shared/data/DICOMDIR").int)
    tmp = out / "_fileset_tmp"
    tmp.mkdir()
    fs.write(tmp)
    shutil.move(str(tmp / "DICOMDIR"), str(out / "DICOMDIR"))
    shutil.rmtree(tmp)

    made = sorted(p.name for p in out.iterdir())
    assert made == sorted(CASES), (made, sorted(CASES))
    return made


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "corrupt")
    args = ap.parse_args(argv)
    for name in build(args.out):
        print(name)


if __name__ == "__main__":
    main()
