"""Everything about the published artefact: schema, writer, card, Hub, loading, training datasets, importers.

The training entry points (``load`` of :mod:`.loading`, ``TrainingDataset``, ``StreamingTrainingDataset`` and
``collate`` of :mod:`.training`, ``RandomResizedCropWithBox`` of :mod:`.crops`) are imported lazily so that
``.schema`` stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load": "loading",
    "TrainingDataset": "training",
    "StreamingTrainingDataset": "training",
    "RandomResizedCropWithBox": "crops",
    "collate": "training",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
