"""A dataset to browse (a local folder or a Hub repo at a revision, read with :func:`loading.load`) and where its
images are."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from multilabel_imagenet.dataset import loading, schema, writer

DEMO_SCENES = "scenes"
"""Folder beside the dataset folder where ``multilabel-imagenet build`` (the synthetic demo) writes its scenes."""


class DatasetView:
    """The configs and splits of one dataset, each loaded once on first use."""

    def __init__(self, source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> None:
        self.where = loading.resolve(source, revision)
        self.cache_dir = cache_dir
        self._loaded: dict[tuple[str, str], datasets.Dataset] = {}

    @property
    def name(self) -> str:
        return self.where.location + (f"@{self.where.revision}" if self.where.revision else "")

    def splits(self, config: str) -> list[str]:
        """The splits of ``config`` (none when the dataset lacks that config), in :data:`schema.SPLITS` order."""
        if self.where.local:
            present = writer.read_build_json(self.where.location)["configs"].get(config, {}).get("splits", {})
        else:
            if config not in datasets.get_dataset_config_names(self.where.location, revision=self.where.revision):
                return []
            present = datasets.get_dataset_split_names(self.where.location, config, revision=self.where.revision)
        return [s for s in schema.SPLITS if s in present]

    def dataset(self, config: str, split: str) -> datasets.Dataset:
        key = (config, split)
        if key not in self._loaded:
            self._loaded[key] = loading.load(
                self.where.location, config, split, revision=self.where.revision, cache_dir=self.cache_dir
            )
        return self._loaded[key]

    def columns(self, config: str, split: str, names: Sequence[str]) -> pa.Table:
        """Some columns of a split as an Arrow table (cheap: no per-row Python objects)."""
        return self.dataset(config, split).select_columns(list(names)).with_format("arrow")[:]

    def rows_by_id(self, config: str, split: str, image_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The rows of ``image_ids`` (those present) in a split, by image id."""
        ids = pa.array(sorted(set(image_ids)), pa.string())
        hits = pc.indices_nonzero(pc.is_in(self.columns(config, split, ["image_id"])["image_id"], value_set=ids))
        rows = self.dataset(config, split).select(hits.to_pylist())
        return {row["image_id"]: row for row in rows}

    def image_root(self, images_root: str | Path | None) -> Path:
        """``images_root`` (the folder holding ``train/`` and ``val/`` that ``path`` is relative to, as for
        ``load(imagenet_root=...)``), or, for the synthetic demo's output, the scenes written beside it."""
        if images_root is not None:
            return Path(images_root)
        if self.where.local:
            folder = Path(self.where.location)
            build = writer.read_build_json(folder)["configs"].get("labels", {}).get("build", {})
            scenes = folder.parent / DEMO_SCENES
            if build.get("parameters", {}).get("maskcut_preset") == "synthetic":
                if (scenes / "classes.json").is_file():
                    return scenes
                raise FileNotFoundError(
                    f"{folder}: a synthetic build, but its scenes are not at {scenes} (where `multilabel-imagenet "
                    "build` writes them); pass --images"
                )
        raise ValueError(f"{self.name}: the dataset does not record where its images are; pass --images")


def image_path(root: Path, split: str, path: str) -> Path:
    """Where an image of ``split`` with dataset ``path`` lies under an ImageNet root."""
    return root / loading.SPLIT_DIRS[split] / path
