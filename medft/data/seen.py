"""A compact, salted record of the patients a model trained or validated on.

A checkpoint that travels to another team must not carry patient IDs, yet evaluating it on
data that contains its own training patients is the most common leakage there is. So a
checkpoint stores :class:`SeenPatients`: 64-bit prefixes of ``sha256(salt, patient_id)``
under a salt drawn fresh for that checkpoint (stored beside them). Anyone holding a
manifest can ask "how many of my patients did this model see?" by hashing their own IDs
with the stored salt; nobody can list the patients from the checkpoint alone, and the keys
match no other medft output (those use ``MEDFT_PATIENT_SALT``).

The record also carries a fingerprint of the training data (paths, patients and labels of
the rows used), so two checkpoints can be told to come from the same data or not.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

__all__ = ["SeenPatients", "data_fingerprint"]

_KEY_BYTES = 8  # 64 bits: a false match needs ~4e9 patients per checkpoint to become likely


def _key_array(patient_ids: Iterable[Any], salt: str) -> np.ndarray:
    """int64 key of each ID under ``salt``, in order (whitespace-trimmed IDs)."""
    prefix = salt.encode("utf-8") + b"\x00"
    return np.array(
        [
            int.from_bytes(
                hashlib.sha256(prefix + str(pid).strip().encode("utf-8")).digest()[:_KEY_BYTES],
                "little",
                signed=True,
            )
            for pid in patient_ids
        ],
        dtype=np.int64,
    )


def _keys(patient_ids: Iterable[Any], salt: str) -> np.ndarray:
    """Sorted unique int64 keys of ``patient_ids`` under ``salt``."""
    return np.unique(_key_array(patient_ids, salt))


@dataclass(frozen=True)
class SeenPatients:
    """The salted keys of the patients behind a checkpoint, by part (``train``, ``val``).

    Attributes:
        salt: Random salt drawn for this record (hex); not a secret, not the user's salt.
        parts: Part name -> sorted int64 keys of its patients.
        fingerprint: :func:`data_fingerprint` of the rows used (``""`` when unknown).
    """

    salt: str
    parts: Mapping[str, np.ndarray]
    fingerprint: str = ""

    @classmethod
    def from_ids(
        cls, parts: Mapping[str, Iterable[Any]], *, fingerprint: str = "", salt: str | None = None
    ) -> SeenPatients:
        """Hash raw patient IDs per part under a fresh random salt (or ``salt``, for tests)."""
        salt = salt or secrets.token_hex(16)
        return cls(salt, {name: _keys(ids, salt) for name, ids in parts.items()}, fingerprint)

    def contains(self, patient_ids: Sequence[Any], part: str | None = None) -> np.ndarray:
        """Boolean per ID: whether that patient is in ``part`` (any part when None)."""
        asked = _key_array(patient_ids, self.salt)
        names = list(self.parts) if part is None else [part]
        keys = [np.asarray(self.parts[n]) for n in names if n in self.parts]
        if not keys:
            return np.zeros(len(asked), dtype=bool)
        return np.isin(asked, np.concatenate(keys))

    def overlap(self, patient_ids: Iterable[Any]) -> dict[str, int]:
        """How many distinct patients of ``patient_ids`` each part (and ``any`` part) holds."""
        asked = _keys(patient_ids, self.salt)
        counts = {name: int(np.isin(asked, keys).sum()) for name, keys in self.parts.items()}
        every = np.concatenate([np.asarray(k) for k in self.parts.values()] or [asked[:0]])
        counts["any"] = int(np.isin(asked, every).sum())
        return counts

    def to_checkpoint(self) -> dict[str, Any]:
        """Tensors and primitives only, so it loads with ``torch.load(weights_only=True)``."""
        return {
            "salt": self.salt,
            "fingerprint": self.fingerprint,
            "parts": {name: torch.from_numpy(keys.copy()) for name, keys in self.parts.items()},
            "counts": {name: len(keys) for name, keys in self.parts.items()},
        }

    @classmethod
    def from_checkpoint(cls, stored: Mapping[str, Any] | None) -> SeenPatients | None:
        """The record saved by :meth:`to_checkpoint`, or None when the checkpoint has none."""
        if not stored or "salt" not in stored:
            return None
        parts = {
            str(name): np.asarray(torch.as_tensor(keys).numpy(), dtype=np.int64)
            for name, keys in dict(stored.get("parts") or {}).items()
        }
        return cls(str(stored["salt"]), parts, str(stored.get("fingerprint", "")))


def data_fingerprint(table: pd.DataFrame, labels: Iterable[str]) -> str:
    """SHA-256 (16 hex) of the rows' paths, patients and labels, independent of row order."""
    columns = ["path", "patient_id", *labels]
    present = [c for c in columns if c in table.columns]
    lines = sorted(
        "\x1f".join(str(v) for v in row)
        for row in table[present].itertuples(index=False, name=None)
    )
    digest = hashlib.sha256()
    digest.update("\x1e".join(present).encode("utf-8"))
    for line in lines:
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]
