"""Loading the published dataset for training: local folder or pinned Hub revision, ImageNet join, targets.

- :func:`load` resolves a local dataset folder (checked first by :func:`.writer.check_folder`) or a
  Hub repo id at a pinned ``revision``, and with ``imagenet_root`` adds an ``image`` column (``datasets.Image``).
- :class:`TrainingDataset` is a ``torch.utils.data.Dataset`` that yields the (transformed) image and a dense
  1000-d target built by an aggregation scheme name (:mod:`multilabel_imagenet.builder.aggregate`), or, with
  :class:`RandomResizedCropWithBox` and the ``proposals`` config, the crop-aware target: each mask's scores count
  in proportion to the fraction of the mask inside the crop (RLE intersected with the crop box, no full decode).
- :func:`collate` batches its items for a DataLoader without changing any dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from multilabel_imagenet import images
from multilabel_imagenet.builder import aggregate
from multilabel_imagenet.dataset import schema, writer

SPLIT_DIRS = {"train": "train", "validation": "val"}
"""Default folder of each split under an ImageNet root (``path`` is relative to it)."""


class MaskSizeError(ValueError):
    """A mask's RLE size disagrees with its image; the message names the image."""


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
    gains an ``image`` column. Build targets with :class:`TrainingDataset`.
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


class RandomResizedCropWithBox:
    """RandomResizedCrop (torchvision's sampling rule) that also returns the crop box ``(x, y, w, h)``."""

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: Image.Resampling = Image.Resampling.BILINEAR,
    ):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio, self.interpolation = scale, ratio, interpolation

    def sample_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A crop box for an image of ``width`` x ``height``: 10 tries at a random area and aspect ratio, then the
        central crop at the nearest allowed ratio (torch's RNG, so DataLoader workers are seeded as usual)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                x = int(torch.randint(0, width - w + 1, size=(1,)).item())
                y = int(torch.randint(0, height - h + 1, size=(1,)).item())
                return x, y, w, h
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif aspect > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, image: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
        x, y, w, h = box = self.sample_box(*image.size)
        return image.resize(self.size[::-1], self.interpolation, box=(x, y, x + w, y + h)), box


def crop_fractions(masks: Sequence[Mapping[str, Any]], box: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each mask's area inside ``box`` (x, y, w, h), float32 [M].

    Masks whose bbox lies inside or outside the box need no RLE work; the others are intersected with the box
    as compressed RLEs (pycocotools), never decoded to pixels."""
    from pycocotools import mask as mask_utils

    x, y, w, h = box
    out = np.zeros(len(masks), dtype=np.float32)
    for i, m in enumerate(masks):
        bx, by, bw, bh = m["bbox"]
        if m["area"] <= 0 or bx >= x + w or by >= y + h or bx + bw <= x or by + bh <= y:
            continue
        if bx >= x and by >= y and bx + bw <= x + w and by + bh <= y + h:
            out[i] = 1.0
            continue
        height, width = m["size"]
        rle = {"size": [height, width], "counts": m["counts"].encode("ascii")}
        crop = mask_utils.frPyObjects(np.array([[x, y, w, h]], dtype=np.float64), height, width)[0]
        inside = mask_utils.area(mask_utils.merge([rle, crop], intersect=True))
        out[i] = float(inside) / float(m["area"])
    return out


def crop_aware_soft(masks: Sequence[Mapping[str, Any]], fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sparse Local-Soft of a crop: per class, the max over masks of (fraction inside the crop) x (mask score)."""
    best: dict[int, float] = {}
    for m, f in zip(masks, fractions, strict=True):
        if f <= 0.0:
            continue
        for c, s in zip(m["classes"], m["scores"], strict=True):
            best[int(c)] = max(best.get(int(c), 0.0), float(f) * float(s))
    order = sorted(best, key=lambda c: (-best[c], c))
    return np.array(order, dtype=np.int16), np.array([best[c] for c in order], dtype=np.float32)


def _check_masks(masks: Sequence[Mapping[str, Any]], width: int, height: int, image_id: str) -> None:
    for j, m in enumerate(masks):
        if list(m["size"]) != [height, width]:
            raise MaskSizeError(
                f"image {image_id!r}: mask {j} ({m['source']}) has RLE size [h, w] = {list(m['size'])} "
                f"but the image is {height}x{width} (height x width)"
            )


def _row(table: pa.Table) -> dict[str, Any]:
    """One-row Arrow table -> dict; list columns become numpy arrays with the stored dtype (float16 stays)."""
    out = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type) and not pa.types.is_struct(column.type.value_type):
            out[name] = np.array(column.values.to_numpy(zero_copy_only=False))  # a writable copy
        else:
            out[name] = column.to_pylist()[0]
    return out


class _ItemBuilder:
    """Turns a ``labels`` row into a training item; shared by the map-style and the streamed datasets."""

    def __init__(
        self,
        column_names: Sequence[str],
        scheme: str,
        transform: Callable[[Image.Image], Any] | None,
        proposals: datasets.Dataset | None,
        crop: RandomResizedCropWithBox | None,
        target_dtype: torch.dtype,
        ambiguity: aggregate.Ambiguity | None,
        columns: Sequence[str],
    ):
        self.scheme = aggregate.parse_scheme(scheme)
        if (crop is None) != (proposals is None):
            raise ValueError("crop-aware targets need both crop= and proposals=")
        missing = [c for c in columns if c not in column_names]
        if missing:
            raise ValueError(f"columns {missing} are not in the split; it has {list(column_names)}")
        self.proposals = None if proposals is None else proposals.with_format("arrow")
        self.transform, self.crop = transform, crop
        self.target_dtype, self.ambiguity, self.columns = target_dtype, ambiguity, tuple(columns)
        self._proposal_index = (
            None if proposals is None else {image_id: i for i, image_id in enumerate(proposals["image_id"])}
        )

    def _image(self, row: Mapping[str, Any]) -> Image.Image | None:
        value = row.get("image")
        if value is None:
            return None
        if value.get("path"):
            image = images.decode_image(value["path"])
        else:
            image = datasets.Image().decode_example(value).convert("RGB")
        if row["width"] is not None and image.size != (row["width"], row["height"]):
            raise MaskSizeError(
                f"{value.get('path') or row['image_id']}: image is {image.size[1]}x{image.size[0]} (height x width) "
                f"but the dataset records {row['height']}x{row['width']}"
            )
        return image

    def _masks(self, image_id: str) -> tuple[list[dict], int, int]:
        try:
            index = self._proposal_index[image_id]
        except KeyError:
            raise KeyError(f"image {image_id!r} has no row in the proposals split") from None
        row = self.proposals[index].to_pylist()[0]
        _check_masks(row["masks"], row["width"], row["height"], image_id)
        return row["masks"], row["width"], row["height"]

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        image = self._image(row)
        item: dict[str, Any] = {"image_id": row["image_id"], "label": row["label"]}
        soft_classes, soft_scores = row["soft_classes"], row["soft_scores"]
        if self.crop is not None:
            masks, width, height = self._masks(row["image_id"])
            if image is None:
                box = self.crop.sample_box(width, height)
            else:
                image, box = self.crop(image)
            item["box"] = torch.tensor(box, dtype=torch.int64)
            soft_classes, soft_scores = crop_aware_soft(masks, crop_fractions(masks, box))
        target = aggregate.dense_target(
            self.scheme,
            soft_classes,
            soft_scores,
            None if row["label"] < 0 else row["label"],
            row["global_classes"],
            row["global_scores"],
            self.ambiguity,
        )
        item["target"] = torch.from_numpy(target).to(self.target_dtype)
        item.update({name: row[name] for name in self.columns})
        if image is not None:
            item["image"] = image if self.transform is None else self.transform(image)
        return item


class _TargetItems:
    """What both training datasets share: the item builder over a ``labels`` split (see :class:`TrainingDataset`)."""

    def __init__(
        self,
        labels: datasets.Dataset | datasets.IterableDataset,
        scheme: str = aggregate.DEFAULT_SCHEME,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        proposals: datasets.Dataset | None = None,
        crop: RandomResizedCropWithBox | None = None,
        target_dtype: torch.dtype = torch.float32,
        ambiguity: aggregate.Ambiguity | None = None,
        columns: Sequence[str] = (),
    ):
        self._build = _ItemBuilder(
            labels.column_names, scheme, transform, proposals, crop, target_dtype, ambiguity, columns
        )
        self.labels = labels.with_format("arrow")


class TrainingDataset(_TargetItems, torch.utils.data.Dataset):
    """Items ``{"image", "target", "label", "image_id"}`` from a ``labels`` split for a DataLoader.

    ``target`` is the dense [1000] target of ``scheme`` (e.g. ``local_soft+original``, ``local_hard@0.5+pred``) in
    ``target_dtype``. With ``crop`` (a :class:`RandomResizedCropWithBox`) and ``proposals`` (the matching
    ``proposals`` split), the local part of the target is crop-aware (see :func:`crop_aware_soft`), ``transform``
    runs on the crop and items carry the crop ``box``. Without an ``image`` column (no ImageNet root), items carry
    no image. ``columns`` names further columns to pass through; list columns come as numpy arrays in their
    stored dtype.
    """

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._build(_row(self.labels[index]))


class StreamingTrainingDataset(_TargetItems, torch.utils.data.IterableDataset):
    """The items of :class:`TrainingDataset` from a streamed ``labels`` split (``load(..., streaming=True)``).

    Same options; ``proposals`` (for crop-aware targets) stays a map-style split. In DataLoader workers, datasets
    gives each worker its own shards, which is why the published shard counts divide evenly.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for table in self.labels:
            yield self._build(_row(table))


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch items: same-shape tensors/arrays are stacked, 1-d ones of different lengths padded (-1 for
    integers, 0 for floats), Python ints become int64 and floats float64, anything else (strings, images) stays
    a list. Dtypes are kept (float16 stays float16)."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        first = values[0]
        if isinstance(first, np.ndarray):
            values = [torch.from_numpy(np.ascontiguousarray(v)) for v in values]
            first = values[0]
        if isinstance(first, torch.Tensor):
            if all(v.shape == first.shape for v in values):
                out[key] = torch.stack(values)
            else:
                fill = 0 if first.is_floating_point() else -1
                out[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=fill)
        elif isinstance(first, bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            out[key] = torch.tensor(values, dtype=torch.int64)
        elif isinstance(first, float):
            out[key] = torch.tensor(values, dtype=torch.float64)
        else:
            out[key] = values
    return out
