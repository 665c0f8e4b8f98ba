"""The indexed Parquet copy of CutLER's COCO JSON: built once (by :mod:`.cutler_convert`), re-used, read back.

:func:`index_cutler` returns the :class:`CutlerIndex` of a JSON file, converting it unless an index made from the
same JSON (same size and mtime, or same sha256) is there; the index is written under a temporary name, then
renamed. :meth:`CutlerIndex.records` streams every image's record in JSON order; :meth:`CutlerIndex.rows_for` reads
only the row groups holding some images, led there by the row-group statistics of the lookup rows.
:func:`import_cutler` writes the ``proposals`` config of a dataset folder from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilabel_imagenet.dataset import cutler_convert, schema
from multilabel_imagenet.dataset.writer import BuildInfo, file_sha256, write_dataset

_IMAGE_COLUMNS = ["image_id", "width", "height", "masks"]


def default_index_path(json_path: str | Path) -> Path:
    """Where :func:`index_cutler` keeps the index unless told: beside the JSON, ``<name>.index.parquet``."""
    json_path = Path(json_path)
    return json_path.with_name(json_path.name + ".index.parquet")


@dataclass(frozen=True)
class CutlerIndex:
    """An index written by :func:`index_cutler`: its statistics, and its records read a row group at a time."""

    path: Path
    source: str
    """The MaskCut configuration stored with each mask."""
    num_images: int
    num_masks: int
    swapped_sizes: int
    """Images whose width/height entry was swapped relative to their masks (CutLER's known bug)."""
    masks_per_image: Counter
    json_sha256: str
    image_row_groups: int
    """The first row groups hold the image rows; the rest hold the lookup rows."""

    @classmethod
    def open(cls, path: str | Path, source: str) -> CutlerIndex:
        """The index at ``path``; ValueError if it is not one of this format."""
        path = Path(path)
        meta = _metadata(path)
        return cls(
            path=path,
            source=source,
            num_images=meta["num_images"],
            num_masks=meta["num_masks"],
            swapped_sizes=meta["swapped_sizes"],
            masks_per_image=Counter({int(k): n for k, n in meta["masks_per_image"].items()}),
            json_sha256=meta["json_sha256"],
            image_row_groups=meta["image_row_groups"],
        )

    def records(self) -> Iterator[schema.ImageProposals]:
        """Every image's ``proposals`` record, in the JSON's image order."""
        file = pq.ParquetFile(self.path)
        for group in range(self.image_row_groups):
            yield from self._proposals(file.read_row_group(group, columns=_IMAGE_COLUMNS))

    def rows_for(self, image_ids: Iterable[str]) -> dict[str, schema.ImageProposals]:
        """The records of those of ``image_ids`` in the file, by image id; reads only the row groups holding them."""
        wanted = sorted(set(image_ids))
        if not wanted:
            return {}
        file = pq.ParquetFile(self.path)
        meta = file.metadata
        rows: list[int] = []
        for group in range(self.image_row_groups, meta.num_row_groups):
            stats = meta.row_group(group).column(0).statistics
            lo, hi = (stats.min, stats.max) if stats is not None and stats.has_min_max else (wanted[0], wanted[-1])
            candidates = wanted[bisect_left(wanted, lo) : bisect_right(wanted, hi)]
            if candidates:
                table = file.read_row_group(group, columns=["image_id", "row"])
                rows += table["row"].filter(pc.is_in(table["image_id"], pa.array(candidates))).to_pylist()
        if not rows:
            return {}
        starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(self.image_row_groups)])
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        groups = np.searchsorted(starts, rows, side="right") - 1
        first, bounds = np.unique(groups, return_index=True)
        found = {}
        for group, local in zip(first.tolist(), np.split(rows, bounds[1:]), strict=True):
            table = file.read_row_group(group, columns=_IMAGE_COLUMNS).take(local - starts[group])
            found.update((record.image_id, record) for record in self._proposals(table))
        return found

    def _proposals(self, table: pa.Table) -> Iterator[schema.ImageProposals]:
        for row in table.to_pylist():
            masks = tuple(
                schema.Proposal((m["height"], m["width"]), m["counts"], tuple(m["bbox"]), m["area"], self.source)
                for m in row["masks"]
            )
            yield schema.ImageProposals(row["image_id"], row["width"], row["height"], masks)


def _metadata(path: Path) -> dict:
    try:
        meta = json.loads(pq.ParquetFile(path).metadata.metadata[cutler_convert.META_KEY])
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: not a CutLER index") from None
    if meta.get("format") != cutler_convert.FORMAT:
        raise ValueError(f"{path}: CutLER index of format {meta.get('format')}, not {cutler_convert.FORMAT}")
    return meta


def index_cutler(json_path: str | Path, index_path: str | Path | None = None, source: str | None = None) -> CutlerIndex:
    """The index of CutLER's COCO JSON at ``index_path`` (default :func:`default_index_path`), built unless one
    made from the same JSON (same size and mtime, or same sha256) is there. ``source`` names the MaskCut
    configuration (default: the JSON's stem). Raises :class:`ImportFormatError` naming the entry of anything
    inconsistent."""
    json_path = Path(json_path)
    index_path = Path(index_path) if index_path is not None else default_index_path(json_path)
    source = source or json_path.stem
    if not _reusable(index_path, json_path):
        index_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=index_path.parent, prefix=f".{index_path.name}.") as spool:
            built = cutler_convert.build(json_path, Path(spool))
            os.replace(built, index_path)
    return CutlerIndex.open(index_path, source)


def _reusable(index_path: Path, json_path: Path) -> bool:
    try:
        meta = _metadata(index_path)
    except ValueError:
        return False
    stat = json_path.stat()
    if meta["json_size"] != stat.st_size:
        return False
    return meta["json_mtime_ns"] == stat.st_mtime_ns or meta["json_sha256"] == file_sha256(json_path)


def cutler_build_info(path: str | Path, version: str, index: CutlerIndex) -> BuildInfo:
    """Build info of a CutLER import: the file's sha256, the configuration name and the repairs made."""
    return BuildInfo(
        version=version,
        source="import of CutLER's MaskCut COCO JSON",
        inputs={Path(path).name: "sha256:" + index.json_sha256},
        parameters={"split": "train", "source": index.source, "swapped_sizes_repaired": index.swapped_sizes},
        models={"maskcut": "CutLER MaskCut (see the file name for backbone, tau and N)"},
    )


def import_cutler(
    path: str | Path,
    output: str | Path,
    version: str,
    source: str | None = None,
    index_path: str | Path | None = None,
) -> CutlerIndex:
    """Write the CutLER file's ``proposals`` config (train split) into the dataset folder ``output``, streaming the
    records from its index (see :func:`index_cutler`). With ``index_path`` the index is built, or re-used, and kept
    there; without, it is built in a temporary folder beside ``output`` (never beside the JSON, whose folder may be
    read-only) and removed afterwards, so the returned index's file is gone."""
    if index_path is not None:
        return _write_proposals(path, output, version, index_cutler(path, index_path, source))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.cutler-index.") as folder:
        return _write_proposals(path, output, version, index_cutler(path, Path(folder) / "index.parquet", source))


def _write_proposals(path: str | Path, output: str | Path, version: str, index: CutlerIndex) -> CutlerIndex:
    write_dataset(output, cutler_build_info(path, version, index), proposals={"train": index.records()})
    return index
