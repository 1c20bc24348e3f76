"""Generic folder layout ``ROOT/CLASS/**/*``: one one-hot column per class folder.

Delegates to :func:`medft.data.manifest.load_manifest` (which owns the folder rules:
image suffixes, hidden files, the first sub-folder as patient) and writes its table as
a CSV, so the labels can be edited or joined with other columns later.
"""

from __future__ import annotations

import os

from medft.data.importers._common import ImportResult, write_manifest
from medft.data.manifest import load_manifest


def import_folder(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    patient_map: str | os.PathLike[str] | None = None,
) -> ImportResult:
    """Write a manifest of a ``CLASS/**/*`` folder.

    Args:
        root: The folder whose sub-folders are the class names.
        out: The manifest CSV to write.
        patient_map: A CSV (``path``, ``patient_id``) naming each image's patient; without
            it the first folder below each class folder (or the file name) is the patient.
    """
    manifest = load_manifest(root, patient_map=patient_map)
    return write_manifest(out, manifest.table, manifest.labels)
