"""Records of one config and split -> a validated, uncompressed Arrow IPC spool, in memory bounded by a batch.

The writer cannot know how many shards a split gets before it has seen the whole split, and a split does not fit
in memory at ImageNet scale (1.28M rows, several GB of RLE text). So records are validated and converted in
batches of at most ``BATCH_ROWS`` rows and ``BATCH_BYTES`` of strings, each batch appended to the spool file (no
Parquet encoding to undo), while the statistics of build.json are counted. The spool is then cut into the
published shards (:func:`.writer.write_config`). No Arrow array ever holds a whole split, so no 2 GiB offset
limit applies."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multilabel_imagenet import classes
from multilabel_imagenet.dataset import schema

BATCH_ROWS = 8192
BATCH_BYTES = 64 * 2**20
"""Upper bound on the RLE text of one batch (a row group of the spool): far from Arrow's 2 GiB offsets."""


class DatasetWriteError(ValueError):
    """A record cannot be written; the message names the config, split, row and image."""


def _where(config: str, split: str, row: int, image_id: str) -> str:
    return f"{config}/{split} row {row} ({image_id!r})"


def _check_sparse(classes_: tuple, scores: tuple, what: str, where: str) -> None:
    if len(classes_) != len(scores):
        raise DatasetWriteError(f"{where}: {what} has {len(classes_)} classes but {len(scores)} scores")
    if len(set(classes_)) != len(classes_):
        raise DatasetWriteError(f"{where}: {what} repeats a class: {list(classes_)}")
    for c in classes_:
        if not 0 <= int(c) < classes.NUM_CLASSES:
            raise DatasetWriteError(f"{where}: {what} class {c} is outside 0..{classes.NUM_CLASSES - 1}")
    for s in scores:
        if not (math.isfinite(s) and 0.0 <= s <= 1.0):
            raise DatasetWriteError(f"{where}: {what} score {s} is not a probability in [0, 1]")


def _check_size(width: int | None, height: int | None, where: str) -> None:
    for name, value in (("width", width), ("height", height)):
        if value is not None and value <= 0:
            raise DatasetWriteError(f"{where}: {name} {value} is not positive")


def _check_labels(record: schema.ImageLabels, where: str) -> int:
    """Validate; return the length of the record's path."""
    if record.label is not None and not 0 <= record.label < classes.NUM_CLASSES:
        raise DatasetWriteError(f"{where}: label {record.label} is outside 0..{classes.NUM_CLASSES - 1}")
    _check_size(record.width, record.height, where)
    _check_sparse(record.soft_classes, record.soft_scores, "soft_classes/soft_scores", where)
    _check_sparse(record.global_classes, record.global_scores, "global_classes/global_scores", where)
    return len(record.path)


def _check_proposals(record: schema.ImageProposals, where: str) -> int:
    """Validate; return the length of the record's RLE text."""
    _check_size(record.width, record.height, where)
    text = 0
    for j, mask in enumerate(record.masks):
        if tuple(mask.size) != (record.height, record.width):
            raise DatasetWriteError(
                f"{where}: mask {j} has RLE size [h, w] = {list(mask.size)} but the image is "
                f"{record.height}x{record.width} (height x width)"
            )
        if len(mask.bbox) != 4:
            raise DatasetWriteError(f"{where}: mask {j} bbox {list(mask.bbox)} is not [x, y, w, h]")
        _check_sparse(mask.classes, mask.scores, f"mask {j} classes/scores", where)
        text += len(mask.counts)
    return text


@dataclass
class _Statistics:
    """What build.json records of a split, counted batch by batch."""

    label_bins: np.ndarray = field(default_factory=lambda: np.zeros(5, dtype=np.int64))  # k = 0, 1, 2, 3, >= 4
    label_sum: int = 0
    soft_sum: int = 0
    masks: int = 0
    sources: Counter = field(default_factory=Counter)

    def add(self, config: str, batch: pa.RecordBatch) -> None:
        if config == "labels":
            labels = pc.list_value_length(batch.column("labels")).to_numpy(zero_copy_only=False)
            self.label_bins += np.bincount(np.minimum(labels, 4), minlength=5)
            self.label_sum += int(labels.sum())
            self.soft_sum += int(pc.sum(pc.list_value_length(batch.column("soft_classes"))).as_py() or 0)
        else:
            masks = pc.list_flatten(batch.column("masks"))
            self.masks += len(masks)
            self.sources.update({s["values"]: s["counts"] for s in pc.value_counts(masks.field("source")).to_pylist()})

    def _histogram(self, rows: int) -> dict[str, float]:
        """Share of images with k = 0, 1, 2, 3 and >= 4 labels (the paper's Table 5), plus the mean."""
        total = max(1, rows)
        bins = {str(k): float(self.label_bins[k]) / total for k in range(4)}
        bins[">=4"] = float(self.label_bins[4]) / total
        return {**bins, "mean": self.label_sum / rows if rows else 0.0}

    def to_dict(self, config: str, rows: int) -> dict[str, Any]:
        if config == "labels":
            return {
                "num_images": rows,
                "label_count_distribution": self._histogram(rows),
                "label_count_threshold": schema.LABEL_THRESHOLD,
                "mean_soft_classes": self.soft_sum / rows if rows else 0.0,
            }
        return {
            "num_images": rows,
            "num_masks": self.masks,
            "mean_masks_per_image": self.masks / rows if rows else 0.0,
            "masks_per_source": dict(sorted(self.sources.items())),
        }


class IdHashes:
    """Repeated image ids found in bounded memory: an 8-byte hash per id; only ids whose hashes clash need a look."""

    def __init__(self):
        self._hashes = array("q")

    def add(self, image_id: str) -> None:
        self._hashes.append(hash(image_id))

    def clashes(self) -> set[int]:
        """The hashes seen more than once (a repeated id, or rarely two ids of one hash)."""
        values = np.sort(np.frombuffer(self._hashes, dtype=np.int64))
        return set(values[1:][values[1:] == values[:-1]].tolist())


@dataclass
class Spool:
    """A split's validated rows in ``path`` (an Arrow IPC file of record batches), with its size and statistics."""

    path: Path
    config: str
    num_rows: int = 0
    num_bytes: int = 0
    """In-memory (Arrow) size of the rows, summed over batches."""
    statistics: dict = field(default_factory=dict)

    @property
    def arrow_schema(self) -> pa.Schema:
        return schema.features(self.config).arrow_schema

    def batches(self) -> Iterator[pa.Table]:
        """The rows again, one Arrow table per spooled batch, read one at a time."""
        with pa.OSFile(str(self.path)) as f:
            spooled = pa.ipc.open_file(f)
            for i in range(spooled.num_record_batches):
                yield pa.Table.from_batches([spooled.get_batch(i)])


def spool(config: str, split: str, records: Iterable, path: Path) -> Spool:
    """Validate ``records`` (pulled one by one) and write them to ``path`` batch by batch (see module doc)."""
    arrow_schema = schema.features(config).arrow_schema
    check, to_row = (
        (_check_labels, schema.labels_row) if config == "labels" else (_check_proposals, schema.proposals_row)
    )
    out = Spool(path, config)
    stats = _Statistics()
    rows: list[dict] = []
    ids = IdHashes()
    text = 0
    with pa.ipc.new_file(str(path), arrow_schema) as spooled:

        def flush() -> None:
            batch = pa.RecordBatch.from_pylist(rows, schema=arrow_schema)
            spooled.write_batch(batch)
            stats.add(config, batch)
            out.num_bytes += batch.nbytes
            rows.clear()

        for i, record in enumerate(records):
            where = _where(config, split, i, record.image_id)
            if not record.image_id:
                raise DatasetWriteError(f"{where}: empty image_id")
            text += check(record, where) + len(record.image_id)
            ids.add(record.image_id)
            rows.append(to_row(record))
            out.num_rows += 1
            if len(rows) == BATCH_ROWS or text >= BATCH_BYTES:
                flush()
                text = 0
        if rows or out.num_rows == 0:
            flush()
    if ids.clashes():  # a repeated id, or (rarely) two ids of one hash: look at the ids
        _check_unique_ids(config, split, path)
    out.statistics = stats.to_dict(config, out.num_rows)
    return out


def _check_unique_ids(config: str, split: str, path: Path) -> None:
    """Refuse a split in which an image_id appears twice, naming its second row (reads the id column)."""
    with pa.OSFile(str(path)) as f:
        spooled = pa.ipc.open_file(f)
        ids = pa.chunked_array(
            [spooled.get_batch(i).column("image_id") for i in range(spooled.num_record_batches)], pa.string()
        )
    if pc.count_distinct(ids).as_py() == len(ids):
        return
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))[0]
    second = pc.indices_nonzero(pc.equal(ids, repeated))[1].as_py()
    where = _where(config, split, second, repeated.as_py())
    raise DatasetWriteError(f"{where}: image_id appears twice in the split")
