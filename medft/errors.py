"""The ground floor: one exception family for everything medft refuses.

Every error a user can cause (a bad file, a bad manifest, a bad config, missing
weights) is a :class:`MedftError`. The CLI prints these without a traceback and
exits non-zero; anything else escaping is a bug in medft.
"""

from __future__ import annotations


class MedftError(Exception):
    """Base class of every error medft raises on purpose."""


class DicomReadError(MedftError):
    """A file could not be read as an X-ray image (names the file and the reason)."""


class UnsupportedCodecError(DicomReadError):
    """The file is valid but no installed decoder handles its transfer syntax."""


class DataError(MedftError):
    """A manifest, label table or split is malformed (names the row or column)."""


class LeakageError(DataError):
    """A patient appears in more than one part of a split."""


class ConfigError(MedftError):
    """A configuration value is invalid (names the key and the allowed values)."""


class WeightsError(MedftError):
    """Pretrained weights could not be found or did not match the model."""


class CheckpointError(MedftError):
    """A checkpoint is missing, unsafe or does not belong to medft."""


class PacsError(MedftError):
    """A PACS could not be reached, refused the association, or refused what was sent."""


def medft_cause(error: BaseException) -> MedftError | None:
    """The first MedftError in an exception's ``__cause__`` chain (itself included), if any.

    MONAI and the DataLoader wrap errors raised inside transforms and workers; this finds
    medft's own message (which names the file) underneath the wrapper.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, MedftError):
            return seen
        seen = seen.__cause__
    return None
