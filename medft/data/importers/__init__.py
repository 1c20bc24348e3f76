"""Dataset importers: a public X-ray set's own files -> a medft manifest CSV.

``medft data import FORMAT --input DIR --out manifest.csv`` calls :func:`import_dataset`.
Each importer maps the set's finding names onto :data:`VOCABULARY`, keeps uncertain
labels as -1 and unknown ones blank, writes a ``split`` column where the set defines an
official split, and writes the manifest atomically. See docs/datasets.md.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from medft._io import check_output_dir, output_file_in
from medft.data.importers._common import VOCABULARY, ImportResult
from medft.data.importers.chexpert import CHEXPERT_LABELS, import_chexpert
from medft.data.importers.folder import import_folder
from medft.data.importers.medmnist import import_medmnist
from medft.data.importers.mimic import import_mimic
from medft.data.importers.nih import NIH_LABELS, import_nih
from medft.data.importers.rsna import import_rsna
from medft.data.importers.siim import import_siim
from medft.data.importers.vindr import VINDR_LABELS, import_vindr
from medft.errors import ConfigError

__all__ = [
    "CHEXPERT_LABELS",
    "IMPORTERS",
    "NIH_LABELS",
    "VINDR_LABELS",
    "VOCABULARY",
    "ImportResult",
    "import_chexpert",
    "import_dataset",
    "import_folder",
    "import_medmnist",
    "import_mimic",
    "import_nih",
    "import_rsna",
    "import_siim",
    "import_vindr",
]

IMPORTERS: dict[str, Callable[..., ImportResult]] = {
    "nih": import_nih,
    "chexpert": import_chexpert,
    "mimic": import_mimic,
    "rsna": import_rsna,
    "siim": import_siim,
    "vindr": import_vindr,
    "medmnist": import_medmnist,
    "folder": import_folder,
}
"""Format name (as on the command line) -> importer."""


MANIFEST_CSV = "manifest.csv"
"""What ``medft data import FORMAT --out DIR`` writes into DIR."""


def import_dataset(
    format: str, root: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any
) -> ImportResult:
    """Run the importer of ``format`` with the options it accepts.

    Args:
        format: A key of :data:`IMPORTERS` (``nih``, ``chexpert``, ...).
        root: The dataset's folder (or, for medmnist, its ``.npz`` file).
        out: Folder for ``manifest.csv`` (and its sidecars, such as ``manifest_boxes.csv``);
            a path ending in ``.csv`` names the manifest file itself.
        options: The importer's own options (see each ``import_*`` function).

    Returns:
        What was written, with counts (``.format()`` prints it).

    Raises:
        ConfigError: Unknown format, or an option that format does not take.
    """
    out = output_file_in(out, MANIFEST_CSV, suffixes=(".csv",))
    if options.get("images_out") is not None:
        check_output_dir(options["images_out"], option="--images-out")
    if format not in IMPORTERS:
        raise ConfigError(f"unknown dataset format {format!r}; use one of {', '.join(IMPORTERS)}")
    importer = IMPORTERS[format]
    accepted = set(inspect.signature(importer).parameters) - {"root", "out"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        takes = ", ".join("--" + name.replace("_", "-") for name in sorted(accepted)) or "none"
        raise ConfigError(f"{format} does not take {flags}; its options: {takes}")
    return importer(root, out, **options)
