"""Loading the published dataset: a local folder or a pinned Hub revision, optionally joined to ImageNet.

:func:`load` resolves (:func:`resolve`) a local dataset folder (checked first by :func:`.writer.check_folder`) or
a Hub repo id at a pinned ``revision``, and with ``imagenet_root`` adds an ``image`` column (``datasets.Image``,
see :func:`add_images`). Targets for training come from :mod:`.training`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from multilabel_imagenet.dataset import schema, writer

SPLIT_DIRS = {"train": "train", "validation": "val"}
"""Default folder of each split under an ImageNet root (``path`` is relative to it)."""


@dataclass(frozen=True)
class Source:
    """Where :func:`load` reads from: a local folder, or a Hub dataset repo at a revision."""

    location: str
    revision: str | None
    local: bool


def resolve(source: str | Path, revision: str | None = None) -> Source:
    """A local folder if ``source`` is an existing directory, else a Hub repo id that must come with ``revision``
    (a tag such as ``v1.0.0``, a commit, or ``main`` to opt out of pinning)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"{path}: a local folder has no revisions; drop revision={revision!r}")
        return Source(str(path.resolve()), None, True)
    if str(source).count("/") != 1 or str(source).startswith((".", "/")):
        raise ValueError(f"{source!r} is neither an existing dataset folder nor a Hub repo id ORG/NAME")
    if revision is None:
        raise ValueError(
            f"{source}: pass revision= (a release tag such as 'v1.0.0', or 'main' to opt out of pinning) so that "
            "training reads the same labels every time"
        )
    return Source(str(source), revision, False)


def _split_root(imagenet_root: str | Path, split: str, split_dirs: Mapping[str, str] | None) -> Path:
    dirs = {**SPLIT_DIRS, **(split_dirs or {})}
    root = Path(imagenet_root) / dirs[split]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no {split} images here (set split_dirs={{{split!r}: ...}} if elsewhere)")
    return root


def add_images(
    ds: datasets.Dataset | datasets.IterableDataset,
    split: str,
    imagenet_root: str | Path,
    split_dirs: Mapping[str, str] | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """``ds`` with an ``image`` column (``datasets.Image``) pointing at ``<root>/<split dir>/<path>``."""
    if "path" not in ds.column_names:
        raise ValueError("only the labels config has a `path` column to join images on")
    root = _split_root(imagenet_root, split, split_dirs)
    first = next(iter(ds.select_columns(["path"])))["path"] if isinstance(ds, datasets.IterableDataset) else None
    if first is None and len(ds):
        first = ds[0]["path"]
    if first is not None and not (root / first).is_file():
        raise FileNotFoundError(f"{root / first}: first image of the {split} split not found under {root}")
    features = datasets.Features({**ds.features, "image": datasets.Image()})
    ds = ds.map(
        lambda batch: {"image": [{"path": str(root / p), "bytes": None} for p in batch["path"]]},
        batched=True,
        features=features,
    )
    # A streamed map's output is not decoded unless asked (datasets 5).
    return ds.decode() if isinstance(ds, datasets.IterableDataset) else ds


def load(
    source: str | Path,
    config: str = schema.DEFAULT_CONFIG,
    split: str = "train",
    *,
    revision: str | None = None,
    imagenet_root: str | Path | None = None,
    split_dirs: Mapping[str, str] | None = None,
    streaming: bool = False,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """One config and split of the dataset, from a local folder or a Hub repo id at ``revision``.

    With ``imagenet_root`` (folders ``train/`` and ``val/`` by default, see ``split_dirs``), the ``labels`` config
    gains an ``image`` column. Build targets with :class:`.training.TrainingDataset`.
    """
    schema.features(config)
    if split not in schema.SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are {', '.join(schema.SPLITS)}")
    where = resolve(source, revision)
    if where.local:
        writer.check_folder(where.location, config, split)
    ds = datasets.load_dataset(
        where.location,
        config,
        split=split,
        revision=where.revision,
        streaming=streaming,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )
    if imagenet_root is not None:
        ds = add_images(ds, split, imagenet_root, split_dirs)
    return ds
