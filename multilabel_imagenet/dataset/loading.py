"""Loading the published dataset for training: local folder or pinned Hub revision, ImageNet join, targets.

- :func:`load` resolves a local dataset folder (checked first by :func:`.writer.check_folder`) or a
  Hub repo id at a pinned ``revision``, and with ``imagenet_root`` adds an ``image`` column (``datasets.Image``).
- :class:`TrainingDataset` is a ``torch.utils.data.Dataset`` that yields the (transformed) image and a dense
  1000-d target built by a scheme name (:mod:`multilabel_imagenet.targets`), or, with
  :class:`RandomResizedCropWithBox` and the ``proposals`` config, the crop-aware target: each mask's scores count
  in proportion to the fraction of the mask inside the crop (RLE intersected with the crop box, no full decode).
- :func:`collate` batches its items for a DataLoader without changing any dtype.

Every item carries its dense target, built in numpy from zero-copy views of the split's Arrow columns (memory
mapped from the datasets cache, so DataLoader workers share them); labels and proposals are joined by row when
their ``image_id`` columns agree, else through one ``pyarrow.compute.index_in`` into a numpy array.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from multilabel_imagenet import images, targets
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


def _fractions(
    bbox: np.ndarray,
    area: np.ndarray,
    sizes: np.ndarray,
    counts: Callable[[int], bytes],
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Fraction of each mask inside ``box``, float32 [M]. A mask whose bbox straddles the box has its compressed
    RLE (``counts(i)``) intersected with the box's RLE (pycocotools, one box RLE per mask size)."""
    x, y, w, h = box
    out = np.zeros(len(area), dtype=np.float32)
    crops: dict[tuple[int, int], dict] = {}
    for i, ((bx, by, bw, bh), a) in enumerate(zip(np.asarray(bbox).tolist(), np.asarray(area).tolist(), strict=True)):
        if a <= 0 or bx >= x + w or by >= y + h or bx + bw <= x or by + bh <= y:
            continue
        if bx >= x and by >= y and bx + bw <= x + w and by + bh <= y + h:
            out[i] = 1.0
            continue
        height, width = size = (int(sizes[i][0]), int(sizes[i][1]))
        if size not in crops:
            crops[size] = mask_utils.frPyObjects(np.array([box], dtype=np.float64), height, width)[0]
        rle = {"size": [height, width], "counts": counts(i)}
        out[i] = float(mask_utils.area(mask_utils.merge([rle, crops[size]], intersect=True))) / a
    return out


def crop_fractions(masks: Sequence[Mapping[str, Any]], box: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each mask's area inside ``box`` (x, y, w, h), float32 [M].

    Masks whose bbox lies inside or outside the box need no RLE work; the others are intersected with the box
    as compressed RLEs (pycocotools), never decoded to pixels."""
    return _fractions(
        np.array([m["bbox"] for m in masks], dtype=np.float64).reshape(-1, 4),
        np.array([m["area"] for m in masks], dtype=np.int64),
        np.array([m["size"] for m in masks], dtype=np.int64).reshape(-1, 2),
        lambda i: masks[i]["counts"].encode("ascii"),
        box,
    )


def _weighted(fractions: np.ndarray, lengths: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each mask's scores times its fraction inside the crop (products in float64, then float32)."""
    return (np.repeat(fractions.astype(np.float64), lengths) * scores.astype(np.float64)).astype(np.float32)


def crop_aware_soft(masks: Sequence[Mapping[str, Any]], fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sparse Local-Soft of a crop: per class, the max over masks of (fraction inside the crop) x (mask score),
    over the masks with some of their area inside; sorted by score (descending, ties by class index)."""
    fractions = np.asarray(fractions)
    lengths = np.array([len(m["classes"]) for m in masks], dtype=np.int64)
    keep = np.repeat(fractions > 0.0, lengths)
    cls = np.concatenate([np.asarray(m["classes"], dtype=np.int64) for m in masks] or [np.zeros(0, np.int64)])
    scores = np.concatenate([np.asarray(m["scores"], dtype=np.float64) for m in masks] or [np.zeros(0)])
    products = np.repeat(fractions.astype(np.float64), lengths) * scores
    unique, inverse = np.unique(cls[keep], return_inverse=True)
    best = np.zeros(len(unique))
    np.maximum.at(best, inverse, products[keep])
    order = np.lexsort((unique, -best))
    return unique[order].astype(np.int16), best[order].astype(np.float32)


def _view(array: pa.Array) -> Any:
    """Zero-copy numpy view of an Arrow array: a list is (offsets, view of its values) with offsets into those
    values, a string or binary (offsets, bytes as uint8), a fixed-size list [n, size], a struct a dict of its
    fields, anything else a numpy array (copied only where nulls force it)."""
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return array.offsets.to_numpy(), _view(array.values)
    if pa.types.is_fixed_size_list(kind):
        return _view(array.flatten()).reshape(-1, kind.list_size)
    if pa.types.is_struct(kind):
        return {kind.field(i).name: _view(array.field(i)) for i in range(kind.num_fields)}
    wide = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)
    if wide or pa.types.is_string(kind) or pa.types.is_binary(kind):
        buffers = array.buffers()
        offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)
        data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
        return offsets[array.offset : array.offset + len(array) + 1], data
    return array.to_numpy(zero_copy_only=False)


def _text(view: tuple[np.ndarray, np.ndarray], j: int) -> str:
    offsets, data = view
    return data[offsets[j] : offsets[j + 1]].tobytes().decode()


def _values(view: tuple[np.ndarray, np.ndarray], j: int) -> np.ndarray:
    offsets, values = view
    return values[offsets[j] : offsets[j + 1]]


def _table_rows(ds: datasets.Dataset) -> tuple[pa.Table, np.ndarray | None]:
    """A split's Arrow table and its row of each dataset index (``None``: the same; set by ``select``/``shuffle``)."""
    indices = ds._indices  # datasets' index mapping (private, stable since datasets 1.x)
    return ds.data.table, None if indices is None else indices.column(0).to_numpy().astype(np.int64)


def _numeric_list(kind: pa.DataType) -> bool:
    return (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and (
        pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
    )


class _Columns:
    """Numpy views of some columns of an Arrow table, one set per record batch (zero-copy, so a >2 GiB string
    column is never combined). Views are rebuilt after unpickling (DataLoader workers started by spawn)."""

    def __init__(self, source: datasets.Dataset | pa.Table, names: Sequence[str]):
        self._source, self._names = source, list(dict.fromkeys(names))

    @cached_property
    def _batches(self) -> tuple[list[int], list[dict[str, Any]], list[pa.RecordBatch]]:
        table = self._source.data.table if isinstance(self._source, datasets.Dataset) else self._source
        batches = [b for b in table.select(self._names).to_batches() if b.num_rows]
        starts = np.cumsum([0] + [b.num_rows for b in batches[:-1]]).tolist()
        return starts, [{n: _view(b.column(n)) for n in self._names} for b in batches], batches

    def open(self) -> None:
        """Build the views now (in the main process, so that forked DataLoader workers share them)."""
        _ = self._batches

    def locate(self, row: int) -> tuple[dict[str, Any], int, pa.RecordBatch]:
        """The views of the batch holding table row ``row``, the row within that batch, and the batch."""
        starts, views, batches = self._batches
        k = bisect.bisect_right(starts, row) - 1
        return views[k], row - starts[k], batches[k]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_batches"}


_TARGET_COLUMNS = ("image_id", "label", "soft_classes", "soft_scores", "global_classes", "global_scores")


class _LabelRows:
    """Reads ``labels`` rows: the target columns as numpy views, the pass-through ``columns`` (numeric list
    columns as writable numpy copies in their stored dtype, others as Python values) and, when the split has
    one, the ``image`` with the recorded ``width``/``height``."""

    def __init__(self, source: datasets.Dataset | pa.Table, schema: pa.Schema, columns: Sequence[str]):
        self.image = "image" in schema.names
        self.columns = tuple(columns)
        self.copied = {c for c in columns if _numeric_list(schema.field(c).type)}
        scalars = [c for c in columns if c not in self.copied] + (["image", "width", "height"] if self.image else [])
        self.table = _Columns(source, [*_TARGET_COLUMNS, *columns, *scalars])
        self._scalars = list(dict.fromkeys(scalars))

    def __call__(self, row: int) -> dict[str, Any]:
        views, j, batch = self.table.locate(row)
        out: dict[str, Any] = {"image_id": _text(views["image_id"], j), "label": int(views["label"][j])}
        for name in _TARGET_COLUMNS[2:]:
            out[name] = _values(views[name], j)
        scalars = {name: batch.column(name)[j].as_py() for name in self._scalars}
        out["columns"] = {n: _values(views[n], j).copy() if n in self.copied else scalars[n] for n in self.columns}
        if self.image:
            out.update(image=scalars["image"], width=scalars["width"], height=scalars["height"])
        return out


def _check_masks(masks: Mapping[str, Any], m0: int, m1: int, width: int, height: int, image_id: str) -> None:
    bad = np.flatnonzero((masks["size"][m0:m1] != (height, width)).any(axis=1))
    if len(bad):
        j = int(bad[0])
        raise MaskSizeError(
            f"image {image_id!r}: mask {j} ({_text(masks['source'], m0 + j)}) has RLE size [h, w] = "
            f"{masks['size'][m0 + j].tolist()} but the image is {height}x{width} (height x width)"
        )


class _IdIndex:
    """Image id -> table row by binary search in the sorted ids as fixed-width bytes (for streamed labels, whose
    ids are only known batch by batch); numpy arrays, so forked workers share them."""

    def __init__(self, ids: pa.ChunkedArray, rows: np.ndarray | None):
        self.width = max(1, pc.max(pc.binary_length(ids)).as_py() or 0)
        keys = self._keys(ids)
        order = np.argsort(keys, kind="stable")
        self.keys, self.rows = keys[order], order if rows is None else rows[order]

    def _keys(self, ids: pa.ChunkedArray) -> np.ndarray:
        columns, parts = np.arange(self.width), []
        for chunk in ids.chunks:
            for start in range(0, len(chunk), 65536):
                offsets, data = _view(chunk.slice(start, 65536))
                lengths = np.diff(offsets)
                take = (columns < lengths[:, None]) & (lengths <= self.width)[:, None]
                out = np.zeros((len(lengths), self.width), dtype=np.uint8)
                out[take] = data[(offsets[:-1, None] + columns)[take]]
                parts.append(out.view(f"S{self.width}").reshape(-1))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=f"S{self.width}")

    def find(self, ids: pa.ChunkedArray) -> np.ndarray:
        """The row of each id, -1 where there is none."""
        keys = self._keys(ids)
        fits = pc.binary_length(ids).to_numpy() <= self.width
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = fits & (self.keys[at] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)
        return np.where(found, self.rows[at] if len(self.keys) else -1, -1)


class _Proposals:
    """The ``proposals`` split as numpy views: per table row, the image size and its masks' slice of the mask
    columns (size, counts, bbox, area, classes, scores)."""

    def __init__(self, proposals: datasets.Dataset):
        self.dataset = proposals
        self.table = _Columns(proposals, ["width", "height", "masks"])

    def join(self, labels: datasets.Dataset) -> np.ndarray | None:
        """Proposals table row of each labels table row (-1: none), or ``None`` when both are the same rows."""
        table, rows = _table_rows(self.dataset)
        labels_table, label_rows = _table_rows(labels)
        ids, label_ids = table.column("image_id"), labels_table.column("image_id")
        if rows is None and label_rows is None and len(ids) == len(label_ids) and pc.all(pc.equal(ids, label_ids)):
            return None
        if rows is not None:
            ids = ids.take(rows)
        found = pc.fill_null(pc.index_in(label_ids, value_set=ids), -1).to_numpy().astype(np.int64)
        return found if rows is None else np.where(found < 0, -1, rows[np.maximum(found, 0)])

    def index(self) -> _IdIndex:
        table, rows = _table_rows(self.dataset)
        ids = table.column("image_id")
        return _IdIndex(ids if rows is None else ids.take(rows), rows)

    def __call__(self, row: int, image_id: str) -> tuple[Mapping[str, Any], int, int, int, int]:
        """(mask views, first mask, end mask, width, height) of table row ``row``; checks the masks' sizes."""
        if row < 0:
            raise KeyError(f"image {image_id!r} has no row in the proposals split")
        views, j, _ = self.table.locate(row)
        offsets, masks = views["masks"]
        width, height = int(views["width"][j]), int(views["height"][j])
        m0, m1 = int(offsets[j]), int(offsets[j + 1])
        _check_masks(masks, m0, m1, width, height, image_id)
        return masks, m0, m1, width, height


def _crop_local(masks: Mapping[str, Any], m0: int, m1: int, box: tuple[int, int, int, int]):
    """Crop-aware Local-Soft in sparse form, classes possibly repeated (the dense scatter takes the max)."""
    counts_offsets, counts = masks["counts"]
    fractions = _fractions(
        masks["bbox"][m0:m1],
        masks["area"][m0:m1],
        masks["size"][m0:m1],
        lambda i: counts[counts_offsets[m0 + i] : counts_offsets[m0 + i + 1]].tobytes(),
        box,
    )
    class_offsets, cls = masks["classes"]
    score_offsets, scores = masks["scores"]
    lengths = np.diff(class_offsets[m0 : m1 + 1])
    scores = scores[score_offsets[m0] : score_offsets[m1]]
    return cls[class_offsets[m0] : class_offsets[m1]], _weighted(fractions, lengths, scores)


class _ItemBuilder:
    """Turns a ``labels`` row (from :class:`_LabelRows`) into a training item; shared by both training datasets."""

    def __init__(
        self,
        column_names: Sequence[str],
        scheme: str,
        transform: Callable[[Image.Image], Any] | None,
        proposals: datasets.Dataset | None,
        crop: RandomResizedCropWithBox | None,
        target_dtype: torch.dtype,
        ambiguity: targets.Ambiguity | None,
        columns: Sequence[str],
    ):
        self.scheme = targets.parse_scheme(scheme)
        if (crop is None) != (proposals is None):
            raise ValueError("crop-aware targets need both crop= and proposals=")
        missing = [c for c in columns if c not in column_names]
        if missing:
            raise ValueError(f"columns {missing} are not in the split; it has {list(column_names)}")
        if self.scheme.ambiguity is not None and ambiguity is None:
            raise ValueError(f"scheme {self.scheme.name!r} needs a calibrated Ambiguity (see calibrate_ambiguity)")
        self.proposals = None if proposals is None else _Proposals(proposals)
        self.transform, self.crop = transform, crop
        self.target_dtype, self.ambiguity = target_dtype, ambiguity

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

    def __call__(self, row: Mapping[str, Any], proposal_row: int = -1) -> dict[str, Any]:
        """The item of ``row``; ``proposal_row`` is its proposals table row (crop-aware targets only)."""
        image = self._image(row)
        label = row["label"]
        item: dict[str, Any] = {"image_id": row["image_id"], "label": label}
        soft_classes, soft_scores = row["soft_classes"], row["soft_scores"]
        if self.crop is not None:
            masks, m0, m1, width, height = self.proposals(proposal_row, row["image_id"])
            if image is None:
                box = self.crop.sample_box(width, height)
            else:
                image, box = self.crop(image)
            item["box"] = torch.tensor(box, dtype=torch.int64)
            soft_classes, soft_scores = _crop_local(masks, m0, m1, box)
        target = targets.dense_target(
            self.scheme,
            soft_classes,
            soft_scores,
            None if label < 0 else label,
            row["global_classes"],
            row["global_scores"],
            self.ambiguity,
            check=False,
        )
        item["target"] = torch.from_numpy(target).to(self.target_dtype)
        item.update(row["columns"])
        if image is not None:
            item["image"] = image if self.transform is None else self.transform(image)
        return item


class _TargetItems:
    """What both training datasets share: the item builder over a ``labels`` split (see :class:`TrainingDataset`)."""

    def __init__(
        self,
        labels: datasets.Dataset | datasets.IterableDataset,
        scheme: str = targets.DEFAULT_SCHEME,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        proposals: datasets.Dataset | None = None,
        crop: RandomResizedCropWithBox | None = None,
        target_dtype: torch.dtype = torch.float32,
        ambiguity: targets.Ambiguity | None = None,
        columns: Sequence[str] = (),
    ):
        self._build = _ItemBuilder(
            labels.column_names, scheme, transform, proposals, crop, target_dtype, ambiguity, columns
        )
        self.labels, self.columns = labels, tuple(columns)


class TrainingDataset(_TargetItems, torch.utils.data.Dataset):
    """Items ``{"image", "target", "label", "image_id"}`` from a ``labels`` split for a DataLoader.

    ``target`` is the dense [1000] target of ``scheme`` (e.g. ``local_soft+original``, ``local_hard@0.5+pred``) in
    ``target_dtype``. With ``crop`` (a :class:`RandomResizedCropWithBox`) and ``proposals`` (the matching
    ``proposals`` split), the local part of the target is crop-aware (see :func:`crop_aware_soft`), ``transform``
    runs on the crop and items carry the crop ``box``. Without an ``image`` column (no ImageNet root), items carry
    no image. ``columns`` names further columns to pass through; list columns come as numpy arrays in their
    stored dtype.
    """

    def __init__(self, labels: datasets.Dataset, *args, **kwargs):
        super().__init__(labels, *args, **kwargs)
        table, self._rows = _table_rows(labels)
        self._read = _LabelRows(labels, table.schema, self.columns)
        self._read.table.open()
        proposals = self._build.proposals
        self._proposal_rows = None if proposals is None else proposals.join(labels)
        if proposals is not None:
            proposals.table.open()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} items")
        row = index % len(self) if self._rows is None else int(self._rows[index])
        proposal_row = -1
        if self._build.proposals is not None:
            proposal_row = row if self._proposal_rows is None else int(self._proposal_rows[row])
        return self._build(self._read(row), proposal_row)


class StreamingTrainingDataset(_TargetItems, torch.utils.data.IterableDataset):
    """The items of :class:`TrainingDataset` from a streamed ``labels`` split (``load(..., streaming=True)``).

    Same options; ``proposals`` (for crop-aware targets) stays a map-style split, found by image id. In
    DataLoader workers, datasets gives each worker its own shards, which is why the published shard counts divide
    evenly.
    """

    def __iter__(self) -> Iterator[dict[str, Any]]:
        labels, worker = self.labels, torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:  # what datasets' own __iter__ does in a worker
            if worker.id >= labels.num_shards:
                return
            labels = labels.shard(min(worker.num_workers, labels.num_shards), worker.id, contiguous=False)
        proposals = self._build.proposals
        index = None if proposals is None else proposals.index()
        for table in labels.with_format("arrow").iter(batch_size=1024):
            read = _LabelRows(table, table.schema, self.columns)
            found = None if index is None else index.find(table.column("image_id"))
            for j in range(table.num_rows):
                yield self._build(read(j), -1 if found is None else int(found[j]))


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
