"""medft.data: reading X-rays, manifests, splits, transforms and the datamodule.

Submodules are imported where they are used (``medft.data.dicom``, ``medft.data.manifest``,
...); the salted patient key, which every layer above names patients by, is re-exported
here.
"""

from medft.data._hashing import patient_key, resolve_salt

__all__ = ["patient_key", "resolve_salt"]
