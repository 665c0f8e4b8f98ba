"""Zero-copy numpy views of a split's Arrow columns, and the readers built on them for the training datasets.

- :class:`LabelRows` reads ``labels`` rows (target columns as views, pass-through columns, the image).
- :class:`Proposals` reads a ``proposals`` split's masks per row and joins it to a ``labels`` split: by row when
  their ``image_id`` columns agree, else through one ``pyarrow.compute.index_in`` (or, for streamed labels, an
  id index searched batch by batch).
- :func:`table_rows` gives a split's Arrow table and its row of each dataset index.

Views are built record batch by record batch from the memory-mapped datasets cache (so DataLoader workers share
them, and a >2 GiB string column is never combined).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class MaskSizeError(ValueError):
    """A mask's RLE size disagrees with its image; the message names the image."""


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


def table_rows(ds: datasets.Dataset) -> tuple[pa.Table, np.ndarray | None]:
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


class LabelRows:
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
    for j, size in enumerate(masks["size"][m0:m1].tolist()):
        if size != [height, width]:
            raise MaskSizeError(
                f"image {image_id!r}: mask {j} ({_text(masks['source'], m0 + j)}) has RLE size [h, w] = "
                f"{size} but the image is {height}x{width} (height x width)"
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


class Proposals:
    """The ``proposals`` split as numpy views: per table row, the image size and its masks' slice of the mask
    columns (size, counts, bbox, area, classes, scores)."""

    def __init__(self, proposals: datasets.Dataset):
        self.dataset = proposals
        self.table = _Columns(proposals, ["width", "height", "masks"])

    def join(self, labels: datasets.Dataset) -> np.ndarray | None:
        """Proposals table row of each labels table row (-1: none), or ``None`` when both are the same rows."""
        table, rows = table_rows(self.dataset)
        labels_table, label_rows = table_rows(labels)
        ids, label_ids = table.column("image_id"), labels_table.column("image_id")
        if rows is None and label_rows is None and len(ids) == len(label_ids) and pc.all(pc.equal(ids, label_ids)):
            return None
        if rows is not None:
            ids = ids.take(rows)
        found = pc.fill_null(pc.index_in(label_ids, value_set=ids), -1).to_numpy().astype(np.int64)
        return found if rows is None else np.where(found < 0, -1, rows[np.maximum(found, 0)])

    def index(self) -> _IdIndex:
        table, rows = table_rows(self.dataset)
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
