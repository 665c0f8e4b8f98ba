"""Conversion of CutLER's COCO JSON of MaskCut pseudo-masks into the index file that :mod:`.cutler_index` reads.

CutLER's files (e.g. ``imagenet_train_fixsize480_tau0.15_N3.json``: 1.28M ``images`` with ``file_name``
``<wnid>/<stem>.JPEG``, ~3.8M ``annotations`` with a COCO RLE ``segmentation``, several GB) are too large to
``json.loads``. :func:`build` streams the JSON with ijson, twice, and never holds more than a partition:

1. ``images`` are checked and spooled to Parquet in partitions of ``_PART_IMAGES`` (JSON order); only their widths
   and heights (and their COCO ids unless these count up in JSON order) stay in memory, as numpy arrays.
2. ``annotations``, in any order, are checked against their image, their RLE size, box and area computed, and
   appended to the spool of their image's partition (range partitioning on the image's JSON position; at most
   ``_SPILL_MASKS`` masks wait in memory). The first mask of each image tells whether its size is swapped.
3. Partition by partition, the masks are sorted by image (stably, so in file order), checked against the repaired
   image size and written as image rows; the partition's image ids, sorted, are spooled as a run.
4. The runs are merged (heap merge, one row group of each in memory) into lookup rows sorted by image id; a
   repeated image shows up there.

The index file (schema ``INDEX``) holds the image rows (JSON order, row groups of ``_ROW_GROUP``) followed by the
lookup rows (``image_id`` and ``row``, sorted by ``image_id``); its key-value metadata under ``META_KEY`` holds
the JSON's size, mtime and sha256, the statistics and where the lookup rows start.

CutLER writes each image's width and height swapped: an image whose first mask is oblong and has the image's size
swapped is repaired (and counted); when some image is swapped and no oblong one agrees with its entry, images
without masks are swapped too (a square image tells neither way).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import ijson
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilabel_imagenet.dataset.importers import ImportFormatError, coco_rle

FORMAT = 1
"""Version of the index file's layout; an index of another format is rebuilt."""
META_KEY = b"multilabel_imagenet.cutler_index"
"""Key of the index file's metadata (JSON)."""
_PART_IMAGES = 4096
_SPILL_MASKS = 16384
_ANN_BATCH = 1024
_ROW_GROUP = 1024
_LOOKUP_GROUP = 8192
_RUN_GROUP = 1024
_NO_MASK, _AS_WRITTEN, _SWAPPED, _SQUARE = 0, 1, 2, 3
"""What an image's first mask says about the image's width/height entry."""

_MASK = pa.struct(
    [
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("counts", pa.string()),
        ("bbox", pa.list_(pa.float64(), 4)),
        ("area", pa.int64()),
    ]
)
INDEX = pa.schema(
    [
        ("image_id", pa.string()),  # the first leaf column: CutlerIndex.rows_for reads its statistics
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("masks", pa.list_(_MASK)),
        ("row", pa.int64()),
    ]
)
_SPOOL_IMAGES = pa.schema([("stem", pa.string()), ("width", pa.int32()), ("height", pa.int32())])
_SPOOL_MASKS = pa.schema([("pos", pa.int32()), *_MASK])
_RUN = pa.schema([("image_id", pa.string()), ("row", pa.int64())])
_IPC = pa.ipc.IpcWriteOptions(compression="zstd")


class _HashingReader:
    """A binary file hashed as it is read."""

    def __init__(self, file):
        self._file, self.digest = file, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self.digest.update(data)
        return data


def _items(path: Path, file, prefix: str) -> Iterator:
    try:
        yield from ijson.items(file, prefix, use_float=True)
    except ijson.JSONError as err:
        raise ImportFormatError(f"{path}: not valid JSON ({err})") from None


@dataclass
class _Images:
    """What the first pass keeps of ``images``: sizes by JSON position, and how to find a COCO id's position."""

    spool: Path
    width: np.ndarray
    height: np.ndarray
    first_id: int
    """The ids are first_id, first_id + 1, ... in JSON order, unless ``sorted_ids`` is set."""
    sorted_ids: np.ndarray | None = None
    order: np.ndarray | None = None
    """JSON position of each of ``sorted_ids``."""

    def positions(self, keys: list) -> tuple[np.ndarray, np.ndarray]:
        """The JSON positions of COCO image ids (0 where not found) and whether each was found."""
        valid = np.fromiter((type(k) is int and -(2**62) < k < 2**62 for k in keys), bool, len(keys))
        codes = np.fromiter((k if ok else 0 for k, ok in zip(keys, valid, strict=True)), np.int64, len(keys))
        n = len(self.width)
        if self.sorted_ids is None:
            pos = codes - self.first_id
            found = valid & (pos >= 0) & (pos < n)
        else:
            at = np.searchsorted(self.sorted_ids, codes).clip(max=max(n - 1, 0))
            found = valid & (self.sorted_ids[at] == codes) if n else np.zeros(len(keys), bool)
            pos = self.order[at] if n else codes
        return np.where(found, pos, 0), found

    def stem(self, pos: int) -> str:
        part = pq.ParquetFile(self.spool).read_row_group(pos // _PART_IMAGES, columns=["stem"])
        return part["stem"][pos % _PART_IMAGES].as_py()


def _read_images(path: Path, file, spool: Path) -> _Images:
    ids, widths, heights = array("q"), array("i"), array("i")
    stems: list[str] = []
    with pq.ParquetWriter(spool, _SPOOL_IMAGES) as writer:
        for i, image in enumerate(_items(path, file, "images.item")):
            try:
                key, stem = image["id"], PurePosixPath(image["file_name"]).stem
                width, height = int(image["width"]), int(image["height"])
            except (KeyError, TypeError, ValueError):
                raise ImportFormatError(f"{path}: images[{i}] lacks an id, file_name, width or height") from None
            if type(key) is not int or not -(2**62) < key < 2**62:
                raise ImportFormatError(f"{path}: images[{i}]: id {key!r} is not an integer")
            ids.append(key)
            widths.append(width)
            heights.append(height)
            stems.append(stem)
            if len(stems) == _PART_IMAGES:
                _write_spool(writer, stems, widths, heights)
                stems = []
        if stems:
            _write_spool(writer, stems, widths, heights)
    if not ids and not _has_images_list(path):
        raise ImportFormatError(f"{path}: not a COCO file (no `images` list)")
    id_array = np.frombuffer(ids, dtype=np.int64)
    width, height = np.frombuffer(widths, dtype=np.int32), np.frombuffer(heights, dtype=np.int32)
    first = int(id_array[0]) if len(id_array) else 0
    if np.array_equal(id_array, np.arange(first, first + len(id_array))):
        return _Images(spool, width, height, first)
    order = np.argsort(id_array, kind="stable").astype(np.int32)
    sorted_ids = id_array[order]
    repeated = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if repeated.size:
        i = int(order[repeated + 1].min())
        raise ImportFormatError(f"{path}: images[{i}]: id {int(id_array[i])} appears twice")
    return _Images(spool, width, height, first, sorted_ids, order)


def _write_spool(writer: pq.ParquetWriter, stems: list[str], widths: array, heights: array) -> None:
    n = len(stems)
    sizes = [np.frombuffer(values[-n:], dtype=np.int32) for values in (widths, heights)]
    table = pa.table([stems, *sizes], schema=_SPOOL_IMAGES)
    writer.write_table(table, row_group_size=_PART_IMAGES)


def _has_images_list(path: Path) -> bool:
    with open(path, "rb") as file:
        return any(prefix == "images" and event == "start_array" for prefix, event, _ in ijson.parse(file))


def _where(path: Path, i: int, ann) -> str:
    return f"{path}: annotations[{i}] (id {ann.get('id') if isinstance(ann, dict) else None})"


def _mask_batch(path: Path, start: int, anns: list, images: _Images, state: np.ndarray) -> pa.RecordBatch:
    """Checked masks of ``anns`` (annotations ``start``, ``start + 1``, ...), updating the first-mask ``state``."""
    from pycocotools import mask as mask_utils

    keys = [ann.get("image_id") if isinstance(ann, dict) else None for ann in anns]
    pos, found = images.positions(keys)
    if not found.all():
        t = int(np.argmin(found))
        raise ImportFormatError(f"{_where(path, start + t, anns[t])}: image_id {keys[t]!r} is not in `images`")
    rles, heights, widths = [], array("i"), array("i")
    for t, (ann, p) in enumerate(zip(anns, pos.tolist(), strict=True)):
        where = _where(path, start + t, ann)
        width, height = int(images.width[p]), int(images.height[p])
        rle = coco_rle(ann.get("segmentation"), height, width, where)
        mh, mw = (int(v) for v in rle["size"])
        if (mh, mw) not in ((height, width), (width, height)):
            raise ImportFormatError(
                f"{where}: mask size [h, w] = {[mh, mw]} disagrees with image {images.stem(p)} ({width}x{height} w x h)"
            )
        if state[p] == _NO_MASK:
            state[p] = _SQUARE if mh == mw else _AS_WRITTEN if (mh, mw) == (height, width) else _SWAPPED
        rles.append(rle)
        heights.append(mh)
        widths.append(mw)
    bbox = np.asarray(mask_utils.toBbox(rles), dtype=np.float64).reshape(-1)
    # pycocotools' area() of more than 255 RLEs overflows under numpy 2 (it sizes its output with a uint8 array)
    columns = [
        pa.array(pos, pa.int32()),
        pa.array(np.frombuffer(heights, dtype=np.int32)),
        pa.array(np.frombuffer(widths, dtype=np.int32)),
        pa.array([rle["counts"].decode("ascii") for rle in rles], pa.string()),
        pa.FixedSizeListArray.from_arrays(pa.array(bbox), 4),
        pa.array(
            np.concatenate([mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)]).astype(np.int64)
        ),
    ]
    return pa.record_batch(columns, schema=_SPOOL_MASKS)


def _read_annotations(path: Path, file, images: _Images, spool: Path, state: np.ndarray) -> None:
    batches: list[pa.RecordBatch] = []
    anns: list = []
    start = 0
    for i, ann in enumerate(_items(path, file, "annotations.item")):
        anns.append(ann)
        if len(anns) == _ANN_BATCH:
            batches.append(_mask_batch(path, start, anns, images, state))
            start, anns = i + 1, []
            if sum(b.num_rows for b in batches) >= _SPILL_MASKS:
                _spill(batches, spool)
                batches = []
    if anns:
        batches.append(_mask_batch(path, start, anns, images, state))
    _spill(batches, spool)


def _spill(batches: list[pa.RecordBatch], spool: Path) -> None:
    """Append the masks of ``batches`` to their partitions' spool files, as length-prefixed Arrow IPC streams."""
    if not batches:
        return
    table = pa.Table.from_batches(batches, _SPOOL_MASKS)
    part = table["pos"].to_numpy() // _PART_IMAGES
    order = np.argsort(part, kind="stable")
    table, part = table.take(order), part[order]
    bounds = [0, *(np.flatnonzero(np.diff(part)) + 1).tolist(), len(part)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, _SPOOL_MASKS, options=_IPC) as writer:
            writer.write_table(table.slice(a, b - a))
        data = sink.getvalue()
        with open(spool / f"masks-{part[a]}.arrows", "ab") as out:
            out.write(len(data).to_bytes(8, "little"))
            out.write(data)


def _partition_masks(spool: Path, k: int) -> pa.Table:
    """Partition ``k``'s masks, sorted by image and, within an image, in file order (the sort is stable)."""
    path = spool / f"masks-{k}.arrows"
    tables = []
    if path.exists():
        data = memoryview(path.read_bytes())
        at = 0
        while at < len(data):
            size = int.from_bytes(data[at : at + 8], "little")
            tables.append(pa.ipc.open_stream(pa.py_buffer(data[at + 8 : at + 8 + size])).read_all())
            at += 8 + size
    table = pa.concat_tables(tables) if tables else _SPOOL_MASKS.empty_table()
    return table.take(pc.sort_indices(table, [("pos", "ascending")]))


def _write_partition(
    path: Path, writer: pq.ParquetWriter, k: int, images: pa.Table, masks: pa.Table, swap: np.ndarray
) -> np.ndarray:
    """Write partition ``k``'s image rows (sizes swapped where ``swap``); return each image's number of masks."""
    n = images.num_rows
    counts = np.bincount(masks["pos"].to_numpy() - k * _PART_IMAGES, minlength=n)
    entry_width, entry_height = images["width"].to_numpy(), images["height"].to_numpy()
    width, height = np.where(swap, entry_height, entry_width), np.where(swap, entry_width, entry_height)
    mh, mw = masks["height"].to_numpy(), masks["width"].to_numpy()
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(counts, out=offsets[1:])
    bad = np.flatnonzero((mh != np.repeat(height, counts)) | (mw != np.repeat(width, counts)))
    if bad.size:
        t = int(bad[0])
        row = int(np.searchsorted(offsets, t, side="right")) - 1
        raise ImportFormatError(
            f"{path}: image {images['stem'][row].as_py()}: mask {t - offsets[row]} has size [h, w] = "
            f"{[int(mh[t]), int(mw[t])]} but the image is {height[row]}x{width[row]} (height x width)"
        )
    values = pa.StructArray.from_arrays([masks[f.name].combine_chunks() for f in _MASK], fields=list(_MASK))
    table = pa.table(
        [images["stem"], width, height, pa.ListArray.from_arrays(pa.array(offsets), values), pa.nulls(n, pa.int64())],
        schema=INDEX,
    )
    writer.write_table(table, row_group_size=_ROW_GROUP)
    return counts


def _write_run(spool: Path, k: int, stems: pa.ChunkedArray) -> Path:
    order = pc.sort_indices(stems)
    run = pa.table([stems.take(order), pc.add(order, k * _PART_IMAGES).cast(pa.int64())], schema=_RUN)
    path = spool / f"run-{k}.parquet"
    pq.write_table(run, path, row_group_size=_RUN_GROUP)
    return path


def _run(path: Path) -> Iterator[tuple[str, int]]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_RUN_GROUP):
        yield from zip(batch["image_id"].to_pylist(), batch["row"].to_pylist(), strict=True)


def _write_lookup(path: Path, writer: pq.ParquetWriter, runs: list[Path]) -> None:
    """Merge the sorted runs into lookup rows; raise on an image id that appears twice."""
    ids: list[str] = []
    rows: list[int] = []

    def flush() -> None:
        n = len(ids)
        nulls = [pa.nulls(n, pa.int32()), pa.nulls(n, pa.int32()), pa.nulls(n, INDEX.field("masks").type)]
        writer.write_table(pa.table([ids, *nulls, rows], schema=INDEX), row_group_size=_LOOKUP_GROUP)
        ids.clear()
        rows.clear()

    previous = None
    for image_id, row in heapq.merge(*(_run(run) for run in runs)):
        if image_id == previous:
            raise ImportFormatError(f"{path}: image {image_id} appears twice in `images`")
        previous = image_id
        ids.append(image_id)
        rows.append(row)
        if len(ids) == _LOOKUP_GROUP:
            flush()
    if ids:
        flush()


def build(path: Path, spool: Path) -> Path:
    """Write the index of the JSON at ``path`` into the folder ``spool``; return its path there."""
    stat = path.stat()
    with open(path, "rb") as raw:
        hashing = _HashingReader(raw)
        images = _read_images(path, hashing, spool / "images.parquet")
    state = np.zeros(len(images.width), np.int8)
    with open(path, "rb") as file:
        _read_annotations(path, file, images, spool, state)
    swapped = int(np.count_nonzero(state == _SWAPPED))
    whole_file = swapped > 0 and not np.any(state == _AS_WRITTEN)
    swap = (state == _SWAPPED) | (whole_file & (state == _NO_MASK))
    del images, state
    spooled = pq.ParquetFile(spool / "images.parquet")
    per_image: Counter = Counter()
    runs = []
    image_row_groups = 0
    out = spool / "index.parquet"
    with pq.ParquetWriter(out, INDEX, compression="zstd") as writer:
        for k in range(spooled.num_row_groups):
            part = spooled.read_row_group(k)
            block = swap[k * _PART_IMAGES : k * _PART_IMAGES + part.num_rows]
            counts = _write_partition(path, writer, k, part, _partition_masks(spool, k), block)
            per_image.update({m: int(n) for m, n in enumerate(np.bincount(counts)) if n})
            runs.append(_write_run(spool, k, part["stem"]))
            image_row_groups += -(-part.num_rows // _ROW_GROUP)
        _write_lookup(path, writer, runs)
        meta = {
            "format": FORMAT,
            "json_size": stat.st_size,
            "json_mtime_ns": stat.st_mtime_ns,
            "json_sha256": hashing.digest.hexdigest(),
            "num_images": len(swap),
            "num_masks": sum(m * n for m, n in per_image.items()),
            "swapped_sizes": swapped,
            "masks_per_image": {str(m): n for m, n in sorted(per_image.items())},
            "image_row_groups": image_row_groups,
        }
        writer.add_key_value_metadata({META_KEY: json.dumps(meta, sort_keys=True)})
    return out
