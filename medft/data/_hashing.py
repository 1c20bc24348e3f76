"""Salted patient keys: how medft names a patient anywhere outside the manifest.

Raw patient IDs never leave the manifest. Split files (``folds.csv``), reports and the
DICOM reader's ``XrayMeta.patient_hash`` all carry :func:`patient_key` instead, so the
same patient gets the same key everywhere as long as the salt is the same.
"""

from __future__ import annotations

import hashlib
import os

SALT_ENV = "MEDFT_PATIENT_SALT"
"""Environment variable that sets the salt when no ``salt`` argument is given."""

DEFAULT_SALT = "medft-default-patient-salt-v1"
"""Salt used when neither an argument nor ``MEDFT_PATIENT_SALT`` provides one."""

KEY_LENGTH = 16
"""Hex characters kept from the SHA-256 digest (64 bits: no collisions at archive scale)."""


def resolve_salt(salt: str | None = None) -> str:
    """Return the salt in force: the argument, else ``$MEDFT_PATIENT_SALT``, else the default."""
    if salt is not None:
        return salt
    return os.environ.get(SALT_ENV) or DEFAULT_SALT


def patient_key(patient_id: str, salt: str | None = None) -> str:
    """Hash a patient ID into a short, stable, non-reversible key.

    The key is the first :data:`KEY_LENGTH` hex digits of
    ``sha256(salt + "\\x00" + patient_id)``; leading and trailing whitespace of the ID is
    ignored so ``"P01 "`` and ``"P01"`` are the same patient.

    Args:
        patient_id: The raw identifier (PatientID from a DICOM header or a manifest).
        salt: Secret salt; defaults to ``$MEDFT_PATIENT_SALT`` or :data:`DEFAULT_SALT`.
            Use a private salt for real data, so keys cannot be matched by brute force.

    Returns:
        A lowercase hex string of :data:`KEY_LENGTH` characters.
    """
    material = f"{resolve_salt(salt)}\x00{str(patient_id).strip()}".encode()
    return hashlib.sha256(material).hexdigest()[:KEY_LENGTH]
