"""Coverage-guided fuzzing of ``read_xray`` with atheris (libFuzzer): the longer run of issue 9.

The CI property test (``tests/test_reliability.py``) mutates real files at random for 200
cases; this script lets libFuzzer steer mutations towards new code paths in medft's reader
and in pydicom, for as long as you give it. Every input must either give a finite float32
image in [0, 1] or raise a ``MedftError``; any other exception, a crash or a case slower
than ``-timeout`` is a finding, saved by libFuzzer as ``crash-*`` / ``timeout-*`` in the
working folder (replay one with ``python tests/fuzz/atheris_read_xray.py crash-...``).

    pip install atheris
    python tests/fuzz/atheris_read_xray.py -max_total_time=600 -timeout=10 -rss_limit_mb=4096

Without a corpus folder it starts one in ``./fuzz-corpus`` from the small DICOM files in
``tests/data/corpus/dicom`` and the ones pydicom ships (libFuzzer adds the
inputs that reach new code to that folder; rerunning continues from it).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["medft", "pydicom"]):
    from medft.data.dicom import read_xray
    from medft.errors import MedftError

ROOT = Path(__file__).resolve().parents[2]
MAX_SEED_BYTES = 64_000


def seed_corpus(folder: Path) -> Path:
    """Copy small real DICOM files into ``folder`` (once) and return it."""
    folder.mkdir(exist_ok=True)
    if any(folder.iterdir()):
        return folder
    from pydicom.data import get_testdata_files

    sources = sorted((ROOT / "tests" / "data" / "corpus" / "dicom").glob("*.dcm"))
    sources += [Path(p) for p in get_testdata_files("*.dcm")]
    for source in sources:
        if source.stat().st_size <= MAX_SEED_BYTES:
            shutil.copy(source, folder / source.name)
    return folder


def test_one_input(data: bytes) -> None:
    """The reader's contract on any bytes: a display image, or medft's own error."""
    try:
        image, _ = read_xray(data)
    except MedftError:
        return
    if image.dtype != np.float32 or image.ndim != 2:
        raise AssertionError(f"not a float32 (H, W) image: {image.dtype} {image.shape}")
    if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
        raise AssertionError("image values outside [0, 1] or not finite")


def main() -> None:
    argv = list(sys.argv)
    if not any(Path(arg).is_dir() or Path(arg).is_file() for arg in argv[1:]):
        argv.append(str(seed_corpus(Path("fuzz-corpus"))))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
