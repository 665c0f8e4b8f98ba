"""The images of a build, listed once and stored in the work directory as Parquet.

Scanning ImageNet's train folder means 1.28M directory entries; a build does it once, in the process that first
opens the work directory, and writes ``<work>/images-<split>.parquet``. Every later process (a rerun, a
``--shard I/N`` worker, a Ray actor) reads that file instead. :class:`ImageList` keeps the listing as three
Arrow columns and makes an :class:`~multilabel_imagenet.images.ImageRecord` only when one is asked for, so a
process holds tens of MB for the listing instead of a million Python objects.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilabel_imagenet import atomic, images

_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("label", pa.int32())])


class ImageList(Sequence):
    """A read-only sequence of image records over Arrow columns; slicing gives another view, not a copy."""

    def __init__(self, table: pa.Table, root: Path):
        self._table, self.root = table, Path(root)
        self._columns = [table.column(name).combine_chunks() for name in ("image_id", "path", "label")]

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("ImageList slices take consecutive records")
            return ImageList(self._table.slice(start, max(0, stop - start)), self.root)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        image_id, path, label = (column[index].as_py() for column in self._columns)
        return images.ImageRecord(image_id, path, label, self.root)


SCAN_CHUNK = 65_536  # records held as Python objects at once while a scan turns them into Arrow columns


def _scan(root: Path, layout: str, labels: Path | None, skipped: list[images.SkippedFile]) -> pa.Table:
    """The records of ``root`` as one Arrow table, converted a chunk at a time; refuses a repeated image id.
    Entries named like images that cannot be used are appended to ``skipped``."""
    records, chunks = images.iter_source(root, layout, labels, skipped), []
    while chunk := list(itertools.islice(records, SCAN_CHUNK)):
        columns = [[r.image_id for r in chunk], [r.path for r in chunk], [r.label for r in chunk]]
        chunks.append(pa.record_batch(columns, schema=_SCHEMA))
    table = pa.Table.from_batches(chunks, schema=_SCHEMA)
    ids = table.column("image_id")
    ordered = pc.take(ids, pc.sort_indices(ids)).combine_chunks()  # a tenth of value_counts' memory
    repeats = pc.indices_nonzero(pc.equal(ordered.slice(1), ordered.slice(0, max(0, len(ordered) - 1))))
    if len(repeats):
        image_id = ordered[repeats[0].as_py()].as_py()
        paths = pc.filter(table.column("path"), pc.equal(ids, image_id)).to_pylist()
        raise images.SourceError(f"{root}: image id {image_id!r} occurs twice ({paths[0]} and {paths[1]})")
    return table


def listing_path(work_dir: Path, split: str) -> Path:
    return Path(work_dir) / f"images-{split}.parquet"


def skipped_path(work_dir: Path, split: str) -> Path:
    """The entries the scan of ``split`` could not list (:class:`~multilabel_imagenet.images.SkippedFile`), one
    JSON line each; ``package`` records them in ``errors.jsonl`` with stage ``list``."""
    return Path(work_dir) / f"images-{split}.skipped.jsonl"


def read_skipped(work_dir: Path, split: str) -> list[dict]:
    path = skipped_path(work_dir, split)
    return [json.loads(line) for line in path.open(encoding="utf-8")] if path.is_file() else []


def open_listing(work_dir: Path, split: str, root: Path, layout: str = "auto", labels: Path | None = None) -> ImageList:
    """The stored listing of ``split``, or a scan of ``root`` written there first (atomically)."""
    root = Path(root)
    path = listing_path(work_dir, split)
    if not path.is_file():
        skipped: list[images.SkippedFile] = []
        table = _scan(root, layout, labels, skipped)
        lines = "".join(json.dumps(asdict(f), sort_keys=True) + "\n" for f in skipped)
        atomic.write_text(skipped_path(work_dir, split), lines)  # before the listing, whose presence means done
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = atomic.temporary(path)
        # one row group: read back as one chunk, ImageList's combine_chunks needs no copy
        pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, table.num_rows))
        tmp.replace(path)
        del table
    try:
        table = pq.read_table(path, schema=_SCHEMA)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: unreadable image listing ({err}); delete it to list the images again") from None
    return ImageList(table, root if root.is_dir() else root.parent)  # a list file's paths are relative to its folder
