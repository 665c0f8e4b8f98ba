"""Everything about the published artefact: schema, writer, card, Hub, loading, importers.

``load``, ``TrainingDataset``, ``RandomResizedCropWithBox`` and ``collate`` (from :mod:`.loading`) are imported
lazily so that ``multilabel_imagenet.dataset.schema`` stays cheap to import.
"""

from __future__ import annotations

from typing import Any

_LOADING = ("load", "TrainingDataset", "RandomResizedCropWithBox", "collate")
__all__ = list(_LOADING)


def __getattr__(name: str) -> Any:
    if name in _LOADING:
        from multilabel_imagenet.dataset import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
