"""PyTorch datasets of training items from a ``labels`` split, and their collate function.

- :class:`TrainingDataset` is a ``torch.utils.data.Dataset`` that yields the (transformed) image and a dense
  1000-d target built by a scheme name (:mod:`multilabel_imagenet.targets`), or, with
  :class:`.crops.RandomResizedCropWithBox` and the ``proposals`` config, the crop-aware target: each mask's scores
  count in proportion to the fraction of the mask inside the crop (RLE intersected with the crop box, no full
  decode). :class:`StreamingTrainingDataset` does the same over a streamed split.
- :func:`collate` batches their items for a DataLoader without changing any dtype.

Every item carries its dense target, built in numpy from the zero-copy column views of :mod:`.columns`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image

from multilabel_imagenet import images, targets
from multilabel_imagenet.dataset.columns import LabelRows, MaskSizeError, Proposals, table_rows
from multilabel_imagenet.dataset.crops import RandomResizedCropWithBox, crop_local


class _TargetItems:
    """What both training datasets share: the options, checked once, and ``_item``, which turns a ``labels`` row
    (from :class:`.columns.LabelRows`) into a training item (see :class:`TrainingDataset`)."""

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
        profile: str | None = None,
    ):
        self.scheme = targets.parse_scheme(scheme, profile)
        if (crop is None) != (proposals is None):
            raise ValueError("crop-aware targets need both crop= and proposals=")
        missing = [c for c in columns if c not in labels.column_names]
        if missing:
            raise ValueError(f"columns {missing} are not in the split; it has {list(labels.column_names)}")
        if self.scheme.ambiguity is not None and ambiguity is None:
            raise ValueError(f"scheme {self.scheme.name!r} needs a calibrated Ambiguity (see calibrate_ambiguity)")
        self.proposals = None if proposals is None else Proposals(proposals)
        if self.proposals is not None:
            self.proposals.table.open()
        self.transform, self.crop = transform, crop
        self.target_dtype, self.ambiguity = target_dtype, ambiguity
        self.labels, self.columns = labels, tuple(columns)

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

    def _item(self, row: Mapping[str, Any], proposal_row: int = -1) -> dict[str, Any]:
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
            soft_classes, soft_scores = crop_local(masks, m0, m1, box)
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


class TrainingDataset(_TargetItems, torch.utils.data.Dataset):
    """Items ``{"image", "target", "label", "image_id"}`` from a ``labels`` split for a DataLoader.

    ``target`` is the dense [1000] target of ``scheme`` (e.g. ``local_soft+original``, ``local_hard@0.5+pred``) in
    ``target_dtype``, read as ``profile`` says (``"paper"``, the default, or ``"authors"``: the released code's
    ``>=`` thresholds and top-1 ``+pred``; see :mod:`multilabel_imagenet.targets`). With ``crop`` (a
    :class:`RandomResizedCropWithBox`) and ``proposals`` (the matching ``proposals`` split), the local part of the
    target is crop-aware (see :func:`.crops.crop_local`), ``transform`` runs on the crop and items carry the crop
    ``box``. Without an ``image`` column (no ImageNet root), items carry no image. ``columns`` names further
    columns to pass through; list columns come as numpy arrays in their stored dtype.
    """

    def __init__(self, labels: datasets.Dataset, *args, **kwargs):
        super().__init__(labels, *args, **kwargs)
        table, self._rows = table_rows(labels)
        if "pred" in self.scheme.global_signals:
            _check_predictions(self.scheme, table)
        self._read = LabelRows(labels, table.schema, self.columns)
        self._read.table.open()
        self._proposal_rows = None if self.proposals is None else self.proposals.join(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for {len(self)} items")
        row = index % len(self) if self._rows is None else int(self._rows[index])
        proposal_row = -1
        if self.proposals is not None:
            proposal_row = row if self._proposal_rows is None else int(self._proposal_rows[row])
        return self._item(self._read(row), proposal_row)


def _check_predictions(scheme: targets.Scheme, table: pa.Table) -> None:
    """``+pred`` needs every image's whole-image prediction: refuse a split that lacks any, at once."""
    missing = pc.sum(pc.equal(pc.list_value_length(table.column("global_classes")), 0)).as_py() or 0
    if missing:
        raise ValueError(
            f"scheme {scheme.name!r} needs the labeler's whole-image prediction, but {missing:,} of "
            f"{table.num_rows:,} images in this split have none (a dataset imported from the authors' TSV stores "
            "none); use a scheme without +pred, e.g. local_soft+original"
        )


class StreamingTrainingDataset(_TargetItems, torch.utils.data.IterableDataset):
    """The items of :class:`TrainingDataset` from a streamed ``labels`` split (``load(..., streaming=True)``).

    Same options; ``proposals`` (for crop-aware targets) stays a map-style split, found by image id. In
    DataLoader workers, datasets gives each worker its own shards, which is why the published shard counts divide
    evenly.
    """

    def __init__(self, labels: datasets.IterableDataset, *args, **kwargs):
        super().__init__(labels, *args, **kwargs)
        # built once here, before DataLoader workers fork, not per worker and epoch
        self._index = None if self.proposals is None else self.proposals.index()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        labels, worker = self.labels, torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:  # what datasets' own __iter__ does in a worker
            if worker.id >= labels.num_shards:
                return
            labels = labels.shard(min(worker.num_workers, labels.num_shards), worker.id, contiguous=False)
        index = self._index
        for table in labels.with_format("arrow").iter(batch_size=1024):
            read = LabelRows(table, table.schema, self.columns)
            found = None if index is None else index.find(table.column("image_id"))
            for j in range(table.num_rows):
                yield self._item(read(j), -1 if found is None else int(found[j]))


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
