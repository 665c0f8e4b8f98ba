"""A dataset to browse (a local folder or a Hub repo at a revision, read with :func:`loading.load`) and where its
images are."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from multilabel_imagenet import images
from multilabel_imagenet.builder.demo import DEMO_SCENES, DEMO_SCENES_DONE
from multilabel_imagenet.dataset import loading, schema, writer


class DatasetView:
    """The configs and splits of one dataset, each loaded (and indexed by image id) once on first use."""

    def __init__(self, source: str | Path, revision: str | None = None, cache_dir: str | Path | None = None) -> None:
        self.where = loading.resolve(source, revision)
        self.cache_dir = cache_dir
        self._splits: dict[str, list[str]] = {}
        self._loaded: dict[tuple[str, str], datasets.Dataset] = {}
        self._rows: dict[tuple[str, str], dict[str, int]] = {}

    @property
    def name(self) -> str:
        return self.where.location + (f"@{self.where.revision}" if self.where.revision else "")

    def splits(self, config: str) -> list[str]:
        """The splits of ``config`` (none when the dataset lacks that config), in :data:`schema.SPLITS` order."""
        if config not in self._splits:
            if self.where.local:
                built = writer.read_build_json(self.where.location)["configs"]
                present = built.get(config, {}).get("splits", {})
            elif config in datasets.get_dataset_config_names(self.where.location, revision=self.where.revision):
                present = datasets.get_dataset_split_names(self.where.location, config, revision=self.where.revision)
            else:
                present = []
            self._splits[config] = [s for s in schema.SPLITS if s in present]
        return self._splits[config]

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

    def row_index(self, config: str, split: str) -> dict[str, int]:
        """The row of each image id in a split."""
        key = (config, split)
        if key not in self._rows:
            ids = self.columns(config, split, ["image_id"])["image_id"].to_pylist()
            self._rows[key] = {image_id: row for row, image_id in enumerate(ids)}
        return self._rows[key]

    def locate(
        self, config: str, image_ids: Iterable[str], splits: Sequence[str] | None = None
    ) -> dict[str, tuple[str, int]]:
        """The (split, row) of each of ``image_ids`` found in ``splits`` of ``config`` (default: all), by id; an
        id in several splits is located in the last."""
        wanted = set(image_ids)
        found: dict[str, tuple[str, int]] = {}
        for split in self.splits(config) if splits is None else splits:
            rows = self.row_index(config, split)
            found.update((i, (split, rows[i])) for i in wanted if i in rows)
        return found

    def rows_by_id(self, config: str, split: str, image_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The rows of ``image_ids`` (those present) in a split, by image id."""
        index = self.row_index(config, split)
        rows = self.dataset(config, split).select(sorted({index[i] for i in image_ids if i in index}))
        return {row["image_id"]: row for row in rows}

    def records(self) -> list[images.ImageRecord]:
        """The images of the ``labels`` config, where :meth:`image_root` finds them (the synthetic demo's)."""
        root = self.image_root(None)
        out = []
        for split in self.splits("labels"):
            folder = image_path(root, split, "")
            for r in self.columns("labels", split, ["image_id", "path", "label"]).to_pylist():
                label = None if r["label"] is None or r["label"] < 0 else r["label"]
                out.append(images.ImageRecord(r["image_id"], r["path"], label, folder))
        return out

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
                if (scenes / DEMO_SCENES_DONE).is_file():
                    return scenes
                raise FileNotFoundError(
                    f"{folder}: a synthetic build, but its scenes are not at {scenes} (where `multilabel-imagenet "
                    "build` writes them); pass --images"
                )
        raise ValueError(f"{self.name}: the dataset does not record where its images are; pass --images")


def image_path(root: Path, split: str, path: str) -> Path:
    """Where an image of ``split`` with dataset ``path`` lies under an ImageNet root."""
    return root / loading.SPLIT_DIRS[split] / path
