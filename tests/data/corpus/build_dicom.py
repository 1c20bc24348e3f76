#!/usr/bin/env python3
"""Rebuild tests/data/corpus/dicom/ from pinned commits of public GitHub repositories.

Every file in dicom/ is a byte-for-byte copy of a file in one of the repositories
below, at the commit given, except the files whose entry has ``anonymise=<new id>``
(names end in ``_anon.dcm``): those are copies with identifying header fields
blanked or removed by anonymise(); their pixel data bytes are untouched.

The MANIFEST below is also read by make_corpus_csv.py for the source/license/note
columns of corpus.csv, so it is the single place that records provenance.

Usage (needs git, and pydicom for the anonymised files):

    python build_dicom.py --repo pydicom/pydicom=/path/to/pydicom.git \
        --repo pydicom/pydicom-data=... --repo pydicom/pylibjpeg-data=... \
        --repo ImagingDataCommons/highdicom=...   [--out dicom]

Each PATH is a git directory (bare repo or a checkout's .git) holding the pinned
commit. With --mirror-root DIR, PATH defaults to DIR/<owner>+<name>/repo.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

COMMITS = {
    "pydicom/pydicom": "fb1f24e4f0418008757766d8e79ec92dc2ab9855",
    "pydicom/pydicom-data": "b0d40d1e0a42c5696936043bbd8059984259cd33",
    "pydicom/pylibjpeg-data": "916aa154a06ac6e85678d8bcffe4273814752c96",
    "ImagingDataCommons/highdicom": "49728738b395c40058f091f13a514b468dff9451",
}

LICENSES = {
    "pydicom/pydicom": "MIT (pydicom; GDCM-origin files BSD-3-Clause-style GDCM licence)",
    "pydicom/pydicom-data": "MIT (pydicom-data)",
    "pydicom/pylibjpeg-data": "MIT (pylibjpeg-data; GDCM-origin files BSD-style GDCM licence)",
    "ImagingDataCommons/highdicom": "MIT (highdicom)",
}

PYD = "src/pydicom/data/test_files/"
PDD = "data_store/data/"
LJD = "ljdata/ds/"
WG04 = (
    "origin: DICOM WG04 compression sample set (D. Clunie 2004; README states "
    "'The images contain no patient identifying information'), redistributed "
    "in this MIT repo"
)


ANON_WG04 = (
    "ANONYMISED COPY: upstream name is a placeholder but real-looking birth "
    "date / accession / other IDs remained; dates, IDs, names blanked; pixel "
    "data bytes unchanged"
)


def m(file, repo, path, note, anonymise=None):
    return dict(
        file=file,
        repo=repo,
        path=path,
        commit=COMMITS[repo],
        license=LICENSES[repo],
        note=note,
        anonymise=anonymise,
    )


MANIFEST = [
    # ---- projection X-ray (CR / DX) ---------------------------------------------
    m(
        "cr_mono1_u16s12_explvr_rescale_16x16.dcm",
        "pydicom/pydicom",
        PYD + "dicomdirtests/77654033/CR1/6154",
        "CR MONOCHROME1, RescaleSlope 0.684 / Intercept 200, one window; pcir.org set "
        "downsized to 16x16 by pydicom; names are placeholders (Doe^Archibald)",
    ),
    m(
        "cr_mono1_u16s15_chest_j2k_lossy_anon.dcm",
        "pydicom/pydicom-data",
        PDD + "RG1_J2KI.dcm",
        "CR chest PA, MONOCHROME1, 15 bits stored, JPEG 2000 lossy; "
        + WG04
        + " (RG1_J2KI). "
        + ANON_WG04,
        anonymise="MEDFT-ANON-0002",
    ),
    m(
        "cr_mono1_u16s10_j2k_lossy_anon.dcm",
        "pydicom/pydicom-data",
        PDD + "RG3_J2KI.dcm",
        "CR tibia, MONOCHROME1, 10 bits stored, JPEG 2000 lossy; "
        + WG04
        + " (RG3_J2KI). "
        + ANON_WG04,
        anonymise="MEDFT-ANON-0003",
    ),
    m(
        "cr_mono1_u16s10_j2k_lossless_anon.dcm",
        "pydicom/pydicom-data",
        PDD + "RG3_J2KR.dcm",
        "same image as cr_mono1_u16s10_j2k_lossy_anon, JPEG 2000 lossless; "
        + WG04
        + " (RG3_J2KR). "
        + ANON_WG04,
        anonymise="MEDFT-ANON-0003",
    ),
    m(
        "cr_mono2_u16s10_jpeg_extended.dcm",
        "pydicom/pylibjpeg-data",
        LJD + "JPEGExtended/RG2_JPLY_fixed.dcm",
        "CR hip, MONOCHROME2, 10 bits in a 12-bit JPEG Extended (process 4) stream; "
        "pylibjpeg-data's fixed copy of WG04 RG2_JPLY (the original has a bad SOS "
        "and does not decode); " + WG04,
    ),
    m(
        "cr_mono2_u16s10_jpegls_nearlossless.dcm",
        "pydicom/pylibjpeg-data",
        LJD + "JPEGLS/RG2_JLSN.dcm",
        "CR hip, MONOCHROME2, JPEG-LS near-lossless; " + WG04 + " (RG2_JLSN)",
    ),
    m(
        "dx_mono1_u8_explvr.dcm",
        "ImagingDataCommons/highdicom",
        "data/test_files/dx_image.dcm",
        "DX (For Presentation) MONOCHROME1, 8-bit, RescaleSlope 1 / Intercept 0, one "
        "window; dog radiograph made by highdicom (patient 'Dog^AVeryGood')",
    ),
    m(
        "dx_mono2_u16s16_chest_j2k_lossless_anon.dcm",
        "pydicom/pylibjpeg-data",
        LJD + "JPEG2000Lossless/JPEG2KLossless_1s_1f_u_16_16.dcm",
        "DX chest (slot scanner), MONOCHROME2, 16 bits stored, JPEG 2000 lossless, "
        "Patient Orientation H\\L (stored upside down), cp1251 text without Specific "
        "Character Set. ANONYMISED COPY: the original carries a real-looking patient "
        "name, birth date, address, institution and physician; those were removed "
        "(see anonymise()); pixel data bytes unchanged",
        anonymise="MEDFT-ANON-0001",
    ),
    # ---- LUTs, windows, padding ------------------------------------------------
    m(
        "ot_mlut_seq_s16b12.dcm",
        "pydicom/pydicom-data",
        PDD + "mlut_18.dcm",
        "Modality LUT Sequence (no Rescale Slope/Intercept), signed 12-bit; IHE MESA "
        "display test image mlut_18",
    ),
    m(
        "ot_voi_lut_seq_u8.dcm",
        "pydicom/pydicom-data",
        PDD + "vlut_04.dcm",
        "VOI LUT Sequence, 8-bit; IHE MESA display test image vlut_04",
    ),
    m(
        "mr_multi_window_overlay_anon.dcm",
        "pydicom/pydicom",
        PYD + "examples_overlay.dcm",
        "two Window Center/Width pairs + explanations, overlay plane in group 6000, "
        "Icon Image Sequence; GDCM MR-SIEMENS-DICOM-WithOverlays cropped by pydicom. "
        "ANONYMISED COPY: name was masked upstream but a real-looking Patient Address "
        "remained; address, names, dates, IDs removed; pixel/overlay bytes unchanged",
        anonymise="MEDFT-ANON-0004",
    ),
    m(
        "ct_s16_padding_rescale.dcm",
        "pydicom/pydicom",
        PYD + "CT_small.dcm",
        "Pixel Padding Value, RescaleIntercept -1024, signed 16-bit; WG04 CT1 "
        "downsized to 128x128 by pydicom",
    ),
    # ---- transfer syntaxes on one small image (same pixels in all six) ----------
    m(
        "mr_s16_explvr.dcm",
        "pydicom/pydicom",
        PYD + "MR_small.dcm",
        "reference for the mr_s16_* set (identical pixel values); WG04 MR1 downsized",
    ),
    m(
        "mr_s16_implvr.dcm",
        "pydicom/pydicom",
        PYD + "MR_small_implicit.dcm",
        "Implicit VR Little Endian copy of mr_s16_explvr",
    ),
    m(
        "mr_s16_explvr_big_endian.dcm",
        "pydicom/pydicom",
        PYD + "MR_small_bigendian.dcm",
        "Explicit VR Big Endian (retired TS) copy of mr_s16_explvr",
    ),
    m(
        "mr_s16_rle.dcm",
        "pydicom/pydicom",
        PYD + "MR_small_RLE.dcm",
        "RLE Lossless copy of mr_s16_explvr",
    ),
    m(
        "mr_s16_j2k_lossless.dcm",
        "pydicom/pydicom",
        PYD + "MR_small_jp2klossless.dcm",
        "JPEG 2000 lossless copy of mr_s16_explvr",
    ),
    m(
        "mr_s16_jpegls_lossless.dcm",
        "pydicom/pydicom",
        PYD + "MR_small_jpeg_ls_lossless.dcm",
        "JPEG-LS lossless copy of mr_s16_explvr",
    ),
    # ---- multi-frame -------------------------------------------------------------
    m(
        "mr_u16s12_10frames_explvr.dcm",
        "pydicom/pydicom-data",
        PDD + "emri_small.dcm",
        "Enhanced MR, 10 frames, native",
    ),
    m(
        "mr_u16s12_10frames_rle.dcm",
        "pydicom/pydicom-data",
        PDD + "emri_small_RLE.dcm",
        "Enhanced MR, 10 frames, RLE (one fragment per frame); same pixels as the native one",
    ),
    # ---- other transfer syntaxes / codecs -----------------------------------------
    m(
        "ot_u8_deflated.dcm",
        "pydicom/pydicom",
        PYD + "image_dfl.dcm",
        "Deflated Explicit VR Little Endian; from dclunie.com 'image_dfl'",
    ),
    m(
        "ot_u8_jpeg_baseline.dcm",
        "pydicom/pylibjpeg-data",
        LJD + "JPEGBaseline/JPEGBaseline_1s_1f_u_08_08.dcm",
        "JPEG Baseline, 8-bit greyscale",
    ),
    m(
        "ot_ybr_full_jpeg_baseline.dcm",
        "pydicom/pydicom",
        PYD + "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG Baseline colour, Photometric YBR_FULL (DCMTK-encoded)",
    ),
    m(
        "nm_u16s12_jpeg_extended.dcm",
        "pydicom/pydicom",
        PYD + "JPGExtended.dcm",
        "JPEG Extended 12-bit (process 4); pydicom's fixed copy of WG04 NM1_JPLY",
    ),
    m(
        "nm_u16s12_jpeg_extended_bad_sos.dcm",
        "pydicom/pydicom",
        PYD + "JPEG-lossy.dcm",
        "REAL-WORLD BROKEN: WG04 NM1_JPLY as published, with invalid SOS parameters; "
        "libjpeg refuses it (GDCM tolerates it). Fixed version: nm_u16s12_jpeg_extended",
    ),
    m(
        "nm_s16_jpeg_lossless_sv1.dcm",
        "pydicom/pydicom-data",
        PDD + "JPEG-LL.dcm",
        "JPEG Lossless SV1 (process 14, selection value 1), signed 16-bit; WG04 NM1_JPLL",
    ),
    m(
        "mr_u16s12_jpeg_lossless_p14.dcm",
        "pydicom/pylibjpeg-data",
        LJD + "JPEGLossless/JPEGLossless_1s_1f_u_16_12.dcm",
        "JPEG Lossless process 14 (1.2.840.10008.1.2.4.57, any predictor), 12-bit; "
        "apparently barre.nom.fr MR-MONO2-12-shoulder (patient 'Anonymized')",
    ),
    m(
        "sc_s16b15_jpegls_lossless.dcm",
        "pydicom/pydicom-data",
        PDD + "JLSL_16_15_1_1F.dcm",
        "JPEG-LS lossless, signed, 15 bits stored in 16",
    ),
    m(
        "sc_u16_jpegls_nearlossless.dcm",
        "pydicom/pydicom",
        PYD + "JPEGLSNearLossless_16.dcm",
        "JPEG-LS near-lossless, 16-bit, tiny (50x10)",
    ),
    m(
        "nm_s16_j2k_lossy.dcm",
        "pydicom/pydicom",
        PYD + "JPEG2000.dcm",
        "JPEG 2000 (lossy TS), signed 16-bit; edited WG04 NM1_J2KI",
    ),
    m(
        "us_ybr_ict_j2k_lossy.dcm",
        "pydicom/pydicom-data",
        PDD + "US1_J2KI.dcm",
        "JPEG 2000 lossy colour, Photometric YBR_ICT; WG04 US1_J2KI",
    ),
    m(
        "us_ybr_rct_j2k_lossless.dcm",
        "pydicom/pydicom-data",
        PDD + "US1_J2KR.dcm",
        "JPEG 2000 lossless colour, Photometric YBR_RCT; WG04 US1_J2KR",
    ),
    m(
        "sc_rgb_htj2k.dcm",
        "pydicom/pydicom-data",
        PDD + "HTJ2K_08_RGB.dcm",
        "High-Throughput JPEG 2000 (1.2.840.10008.1.2.4.203), RGB 8-bit",
    ),
    # ---- colour / palette / odd files ------------------------------------------------
    m(
        "ot_rgb_u8_explvr.dcm",
        "pydicom/pydicom-data",
        PDD + "SC_rgb.dcm",
        "native RGB 8-bit (fictional patient Lestrade^G)",
    ),
    m(
        "ot_ybr_full_422_explvr.dcm",
        "pydicom/pydicom",
        PYD + "SC_ybr_full_422_uncompressed.dcm",
        "native YBR_FULL_422 (subsampled chroma in native encoding)",
    ),
    m(
        "us_rgb_explvr_big_endian.dcm",
        "pydicom/pydicom",
        PYD + "ExplVR_BigEnd.dcm",
        "native RGB in Explicit VR Big Endian; barre.nom.fr US-RGB-8-epicard downsized",
    ),
    m(
        "us_palette_color_rle.dcm",
        "pydicom/pydicom-data",
        PDD + "OBXXXX1A_rle.dcm",
        "PALETTE COLOR, RLE; ultrasound (Philips) from pydicom issue 205; patient "
        "'OB^^^^', ID is a timestamp",
    ),
    m(
        "ct_no_file_meta.dcm",
        "pydicom/pydicom",
        PYD + "no_meta.dcm",
        "pydicom's no_meta.dcm as published: no preamble, 'DICM' or File Meta, AND it "
        "starts one byte early (a stray 0x20 left from the cut header), so even "
        "force=True parses garbage (one UN element). Clean variant: "
        "corrupt/no_file_meta.dcm",
    ),
    m(
        "seg_1bit_deflated_image_frame.dcm",
        "pydicom/pydicom-data",
        PDD + "liver_deflate.dcm",
        "DICOM SEG, 1-bit, 3 frames, Deflated Image Frame Compression "
        "(1.2.840.10008.1.2.8.1, added to DICOM in 2024); dcmqi example",
    ),
]


def anonymise(ds, new_id):
    """Anonymised copy (in place): blank every PN and every DA/DT/TM value (nested
    too), replace Patient ID, delete address/phone/other IDs/free-text diagnosis
    and private tags, blank institution, accession, study ID, station and device
    serial. Pixel Data and overlays are not touched."""
    blank_kw = {
        "InstitutionName",
        "AccessionNumber",
        "InstitutionalDepartmentName",
        "StudyID",
        "StationName",
        "DeviceSerialNumber",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
    }

    def blank(d, el):
        if el.value in (None, ""):
            return
        if el.VR in ("PN", "DA", "DT", "TM") or el.keyword in blank_kw:
            el.value = ""

    ds.walk(blank)
    ds.PatientID = new_id
    for kw in (
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientComments",
        "AdmittingDiagnosesDescription",
        "InstitutionAddress",
        "StudyComments",
        "PatientBirthName",
        "PatientMotherBirthName",
    ):
        if kw in ds:
            delattr(ds, kw)
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "medft shared/data: PN+dates blanked, PID replaced"
    return ds


def git_show(git_dir: Path, commit: str, path: str) -> bytes:
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"],
        check=True,
        capture_output=True,
    ).stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", action="append", default=[], metavar="OWNER/NAME=GITDIR")
    ap.add_argument("--mirror-root", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "dicom")
    args = ap.parse_args(argv)
    dirs = dict(r.split("=", 1) for r in args.repo)
    args.out.mkdir(parents=True, exist_ok=True)
    for e in MANIFEST:
        gd = dirs.get(e["repo"])
        if gd is None and args.mirror_root:
            gd = args.mirror_root / (e["repo"].replace("/", "+")) / "repo"
        if gd is None:
            sys.exit(f"no git dir for {e['repo']}; pass --repo or --mirror-root")
        data = git_show(Path(gd), e["commit"], e["path"])
        dest = args.out / e["file"]
        if e["anonymise"]:
            import io

            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data))
            before = bytes(ds.PixelData)
            anonymise(ds, e["anonymise"])
            assert bytes(ds.PixelData) == before
            ds.save_as(dest, enforce_file_format=False)
        else:
            dest.write_bytes(data)
        print(f"{hashlib.sha256(dest.read_bytes()).hexdigest()[:12]}  {dest.name}")


if __name__ == "__main__":
    main()
