#!/usr/bin/env python3
"""Write corpus.csv and corpus_versions.json by actually decoding every file.

    python make_corpus_csv.py            # uses the interpreter it runs under

For each file in dicom/ and corrupt/ it records header facts and tries

    ds = pydicom.dcmread(path)           # force=False    -> column `expect`
    arr = ds.pixel_array
    ds = pydicom.dcmread(path, force=True)                -> column `expect_force`

with Pillow hidden from pydicom, so the only third-party decoders are pylibjpeg
(+ pylibjpeg-libjpeg, pylibjpeg-openjpeg) and pydicom's own (native, RLE, deflate).
A second pass with every installed plugin (Pillow included) is compared and any
difference is written into `note`.

expect:
  decodes            pixel_array returned an array
  unsupported_codec  read fine, but no installed decoder handles the Transfer Syntax
                     (NotImplementedError, or plugins missing dependencies)
  invalid            anything else: not readable as DICOM, no/short/inconsistent
                     pixel data, a codec that rejects the bitstream, a directory
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # keep the corpus free of __pycache__

TS_NAMES_MISSING_IN_PYDICOM = {
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
}

COLUMNS = [
    "file",
    "kind",
    "source",
    "license",
    "modality",
    "sop_class",
    "photometric",
    "samples_per_pixel",
    "bits_allocated",
    "bits_stored",
    "pixel_representation",
    "transfer_syntax_uid",
    "transfer_syntax_name",
    "frames",
    "rows_x_cols",
    "features",
    "expect",
    "expect_force",
    "detail",
    "decoded",
    "pydicom_luts",
    "bytes",
    "sha256",
    "note",
]


def classify_exc(e: BaseException) -> str:
    msg = str(e)
    if isinstance(e, NotImplementedError):
        return "unsupported_codec"
    if isinstance(e, RuntimeError) and "missing dependencies" in msg:
        return "unsupported_codec"
    return "invalid"


def try_decode(path: str, force: bool):
    """Return (expect, detail, decoded, luts)."""
    import numpy as np
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        with warnings.catch_warnings(record=True) as wr:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=force)
    except Exception as e:
        return "invalid", f"dcmread: {type(e).__name__}: {str(e)[:160]}", "", "n/a"

    def warns(*lists):
        return "; ".join(
            sorted({" ".join(str(w.message).split())[:120] for lst in lists for w in lst})
        )

    try:
        with warnings.catch_warnings(record=True) as wp:
            warnings.simplefilter("always")
            arr = ds.pixel_array
    except Exception as e:
        w = warns(wr, wp)
        return (
            classify_exc(e),
            f"pixel_array: {type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}" + (f" (warning: {w})" if w else ""),
            "",
            "n/a",
        )
    warn = warns(wr, wp)
    decoded = f"{arr.dtype.str} {tuple(arr.shape)} min={arr.min()} max={arr.max()}"
    luts = "n/a (colour)"
    if ds.get("SamplesPerPixel", 1) == 1:
        frame = arr[0] if arr.ndim == 3 else arr
        try:
            out = apply_modality_lut(frame, ds)
            out = apply_voi_lut(out, ds)
            luts = "ok" if np.isfinite(out).all() else "ok (non-finite values)"
        except Exception as e:
            luts = f"{type(e).__name__}: {' '.join(str(e).split())[:100]}"
    return "decodes", ("warning: " + warn) if warn else "", decoded, luts


def header_facts(path: str) -> dict:
    import pydicom
    from pydicom.uid import UID

    f = {}
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=False)
    except Exception:
        return f
    g = lambda k, d="": ds.get(k, d)  # noqa: E731
    ts = ds.file_meta.get("TransferSyntaxUID", "") if hasattr(ds, "file_meta") else ""
    f["modality"] = g("Modality")
    sop = g("SOPClassUID") or (
        ds.file_meta.get("MediaStorageSOPClassUID", "") if hasattr(ds, "file_meta") else ""
    )
    f["sop_class"] = UID(sop).name if sop else ""
    f["photometric"] = g("PhotometricInterpretation")
    for col, kw in (
        ("samples_per_pixel", "SamplesPerPixel"),
        ("bits_allocated", "BitsAllocated"),
        ("bits_stored", "BitsStored"),
        ("pixel_representation", "PixelRepresentation"),
    ):
        f[col] = g(kw)
    f["transfer_syntax_uid"] = str(ts)
    name = TS_NAMES_MISSING_IN_PYDICOM.get(str(ts)) or (UID(ts).name if ts else "")
    f["transfer_syntax_name"] = "" if name == str(ts) and ts else name
    if ts and not f["transfer_syntax_name"]:
        f["transfer_syntax_name"] = "(not a known transfer syntax)"
    if not ts:
        f["transfer_syntax_name"] = "(no File Meta / no Transfer Syntax UID)"
    f["frames"] = g("NumberOfFrames", 1 if "PixelData" in ds else "")
    f["rows_x_cols"] = f"{g('Rows')}x{g('Columns')}" if "Rows" in ds else ""
    feats = []
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        feats.append(f"rescale({g('RescaleSlope')},{g('RescaleIntercept')})")
    if "ModalityLUTSequence" in ds:
        feats.append("modality_lut_seq")
    if "VOILUTSequence" in ds:
        feats.append("voi_lut_seq")
    if "WindowCenter" in ds:
        wc = ds["WindowCenter"].VM
        feats.append(f"windows={wc}")
    if "PixelPaddingValue" in ds:
        feats.append(f"padding({g('PixelPaddingValue')})")
    if "PresentationLUTShape" in ds:
        feats.append(f"presentation_lut({g('PresentationLUTShape')})")
    if any(0x6000 <= t.group <= 0x601E and t.element == 0x3000 for t in ds.keys()):  # noqa: SIM118 (tags, not elements)
        feats.append("overlay")
    if "IconImageSequence" in ds:
        feats.append("icon")
    if "RedPaletteColorLookupTableData" in ds or "SegmentedRedPaletteColorLookupTableData" in ds:
        feats.append("palette")
    if str(g("NumberOfFrames", 1)) not in ("", "1"):
        feats.append("multi-frame")
    if "PatientIdentityRemoved" in ds and "_anon" in path:
        feats.append("anonymised_copy")
    f["features"] = " ".join(feats)
    return f


def run_pass(files, hide_pillow: bool) -> dict:
    """Decode in a child process (so hiding Pillow cannot leak)."""
    code = (
        "import sys, json; sys.dont_write_bytecode = True; "
        + ("sys.modules['PIL'] = None; " if hide_pillow else "")
        + f"sys.path.insert(0, {str(HERE)!r}); import make_corpus_csv as m; "
        "print(json.dumps({p: [m.try_decode(p, False), m.try_decode(p, True)] "
        "for p in json.load(sys.stdin)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(files),
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": sys.version.split()[0]}
    for p in (
        "pydicom",
        "pylibjpeg",
        "pylibjpeg-libjpeg",
        "pylibjpeg-openjpeg",
        "pylibjpeg-rle",
        "numpy",
        "pillow",
        "python-gdcm",
    ):
        try:
            v[p] = md.version(p)
        except md.PackageNotFoundError:
            v[p] = None
    return v


def main():
    from build_dicom import MANIFEST
    from make_corrupt import CASES

    man = {e["file"]: e for e in MANIFEST}
    files = sorted(f"dicom/{p.name}" for p in (HERE / "dicom").iterdir())
    files += sorted(f"corrupt/{p.name}" for p in (HERE / "corrupt").iterdir())
    strict = run_pass(files, hide_pillow=True)
    loose = run_pass(files, hide_pillow=False)

    rows = []
    for rel in files:
        p = HERE / rel
        kind, name = rel.split("/", 1)
        row = dict.fromkeys(COLUMNS, "")
        row.update(file=rel, kind=kind)
        if kind == "dicom":
            e = man[name]
            row["source"] = f"github:{e['repo']}@{e['commit'][:12]}:{e['path']}"
            row["license"] = e["license"]
            note = e["note"]
        else:
            src, note = CASES[name]
            if src:
                row["source"] = f"make_corrupt.py from dicom/{src}"
                row["license"] = f"as dicom/{src}: {man[src]['license']}"
            else:
                row["source"] = "make_corrupt.py (generated)"
                row["license"] = "generated here; no third-party content"
        if p.is_file():
            data = p.read_bytes()
            row["bytes"] = len(data)
            row["sha256"] = hashlib.sha256(data).hexdigest()
            row.update(header_facts(rel))
        (x, det, dec, luts), (xf, detf, _, _) = strict[rel]
        row.update(expect=x, expect_force=xf, detail=det, decoded=dec, pydicom_luts=luts)
        if x != "decodes" and xf == "decodes":
            row["detail"] = f"{det} | force=True decodes"
        elif x != "decodes" and detf and detf != det:
            row["detail"] = f"{det} | force=True -> {detf}"
        lx = loose[rel][0][0]
        if lx != x:
            note += f" [with Pillow also installed: {lx}]"
        row["note"] = note
        rows.append(row)

    with open(HERE / "corpus.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    meta = {
        "versions": versions(),
        "protocol": "pydicom.dcmread(path) then ds.pixel_array; Pillow hidden "
        "(decoders: pydicom native/RLE/deflate + pylibjpeg); "
        "expect_force uses dcmread(path, force=True)",
        "counts": {k: sum(r["kind"] == k for r in rows) for k in ("dicom", "corrupt")},
        "expect": {
            k: sum(r["expect"] == k for r in rows)
            for k in ("decodes", "unsupported_codec", "invalid")
        },
    }
    (HERE / "corpus_versions.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    os.chdir(HERE)
    main()
