"""Everything about the published artefact: schema, writer, card, Hub, loading, importers.

The training entry points of :mod:`.loading` (``load``, ``TrainingDataset``, ``StreamingTrainingDataset``,
``RandomResizedCropWithBox``, ``collate``) are imported lazily so that ``.schema`` stays cheap to import.
"""

from __future__ import annotations

from typing import Any

_LOADING = ("load", "TrainingDataset", "StreamingTrainingDataset", "RandomResizedCropWithBox", "collate")
__all__ = list(_LOADING)


def __getattr__(name: str) -> Any:
    if name in _LOADING:
        from multilabel_imagenet.dataset import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
