"""Importers: published annotation files -> records of the dataset folder, so users get ``load_dataset`` today.

- :func:`read_tsv`: the authors' ``multilabel/multilabel_compressed.tsv``, one line per train image,
  ``filename<TAB>gt_index<TAB>idx_list<TAB>prob_list`` (e.g. ``n01440764/n01440764_10042.JPEG  0  0,391
  0.2654,1.0000``): filename relative to the train root, class indices in sorted-wnid order, comma-separated
  lists (possibly empty) of the classes with non-zero probability. The original label is not forced.
  These become ``labels`` rows (no width/height unless an ImageNet root is given; no whole-image prediction).
  Read strictly: UTF-8 (a leading byte-order mark is dropped), blank lines and one header line of column names
  skipped, class indices of digits 0-9 only, probabilities decimal numbers in [0, 1], filenames relative
  '/'-separated paths; a file without image lines is an error, not an empty dataset.
  Records are streamed; only an 8-byte hash per line is kept, to find repeated images.
- CutLER's COCO JSON of MaskCut pseudo-masks: see :mod:`.cutler_index` (streamed into an indexed Parquet file).
- :func:`coco_rle` and :func:`decode_mask`: any COCO segmentation form as a compressed RLE or a bool mask.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from multilabel_imagenet import classes, textlines
from multilabel_imagenet.dataset import schema
from multilabel_imagenet.dataset.spool import IdHashes
from multilabel_imagenet.dataset.writer import BuildInfo, file_sha256, read_build_json, write_dataset


class ImportFormatError(ValueError):
    """An input file does not have the published format; the message names the file, the line or entry, and why."""


_INT = re.compile(r"[0-9]+")
_NUMBER = r"\s*[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*"
_NUMBER_LIST = re.compile(rf"{_NUMBER}(?:,{_NUMBER})*")
_INT_LIST = re.compile(r"\s*[0-9]+\s*(?:,\s*[0-9]+\s*)*")
_HEADER_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _floats(text: str, where: str) -> tuple[float, ...]:
    if not text.strip():
        return ()
    if not _NUMBER_LIST.fullmatch(text):  # float() would take "nan", "inf" and "0_5"
        raise ImportFormatError(f"{where}: prob_list {text!r} is not a comma-separated list of decimal numbers")
    return tuple(map(float, text.split(",")))


def _ints(text: str, where: str) -> tuple[int, ...]:
    if not text.strip():
        return ()
    if not _INT_LIST.fullmatch(text):  # int() would take "0_0", "+1" and non-ASCII digits
        raise ImportFormatError(
            f"{where}: idx_list {text!r} is not a comma-separated list of class indices (digits 0-9)"
        )
    return tuple(map(int, text.split(",")))


def _fields(line: str) -> list[str]:
    return line.split("\t") if "\t" in line else line.split()


def _is_header(line: str) -> bool:
    """A column-name line (``filename<TAB>gt_index<TAB>...``, any names): every field a word, as no image line is
    (its filename has a '/' or '.', its gt_index is digits)."""
    fields = [f.strip() for f in _fields(line)]
    return len(fields) >= 2 and all(_HEADER_FIELD.fullmatch(f) for f in fields)


def _parse_tsv_line(line: str, where: str) -> tuple[str, int, tuple[int, ...], tuple[float, ...]]:
    fields = _fields(line)
    if not 2 <= len(fields) <= 4:
        raise ImportFormatError(
            f"{where}: expected filename, gt_index, idx_list, prob_list; found {len(fields)} fields"
        )
    fields += [""] * (4 - len(fields))
    filename, gt, idx, prob = (f.strip() for f in fields)
    if not _INT.fullmatch(gt):
        raise ImportFormatError(f"{where}: gt_index {gt!r} is not a class index (digits 0-9)")
    return filename, int(gt), _ints(idx, where), _floats(prob, where)


def _check_filename(filename: str, where: str) -> str:
    """The folder a checked filename lies in ('' for none); raises unless it is a relative '/'-separated path."""
    parts = filename.split("/")
    reason = None
    if not filename:
        reason = "is empty"
    elif "\\" in filename:
        reason = "holds a backslash; write paths with '/'"
    elif _CONTROL.search(filename):
        reason = "holds a control character"
    elif any(part in ("", ".", "..") for part in parts):
        reason = "must be a path relative to the train root (no leading or trailing '/', no '//', '.' or '..')"
    if reason is not None:
        raise ImportFormatError(f"{where}: filename {filename!r} {reason}")
    return parts[-2] if len(parts) > 1 else ""


def _check_tsv_row(filename: str, label: int, idx: tuple, prob: tuple, where: str) -> None:
    folder = _check_filename(filename, where)
    if not 0 <= label < classes.NUM_CLASSES:
        raise ImportFormatError(f"{where}: gt_index {label} is outside 0..{classes.NUM_CLASSES - 1}")
    if folder and folder != classes.wnid_of(label):
        raise ImportFormatError(
            f"{where}: {filename} lies in folder {folder} but gt_index {label} is {classes.wnid_of(label)} "
            "(indices must be in sorted-wnid order)"
        )
    if len(idx) != len(prob):
        raise ImportFormatError(f"{where}: {len(idx)} class indices but {len(prob)} probabilities")
    if any(not 0 <= c < classes.NUM_CLASSES for c in idx) or len(set(idx)) != len(idx):
        raise ImportFormatError(
            f"{where}: class indices {list(idx)} must be distinct and in 0..{classes.NUM_CLASSES - 1}"
        )
    if any(not 0.0 <= p <= 1.0 for p in prob):
        raise ImportFormatError(f"{where}: probabilities {list(prob)} must lie in [0, 1]")


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """:func:`~multilabel_imagenet.textlines.utf8_lines`, a bad line named as ``FILE:LINE``."""
    try:
        yield from textlines.utf8_lines(path)
    except textlines.NotUTF8 as err:
        raise ImportFormatError(f"{path}:{err.line}: {err.reason}") from None


def _tsv_rows(path: Path) -> Iterator[tuple[str, str, int, tuple[int, ...], tuple[float, ...]]]:
    """(where, filename, gt_index, idx_list, prob_list) of each checked line; blank lines and a header line (the
    first non-blank line, if it is one) are skipped. A file without image lines raises."""
    header = blank = 0
    rows = 0
    for number, line in _text_lines(path):
        line = line.rstrip("\r\n")
        where = f"{path}:{number}"
        if not line.strip():
            blank += 1
            continue
        if rows == 0 and not header and _is_header(line):
            header = number
            continue
        filename, label, idx, prob = _parse_tsv_line(line, where)
        _check_tsv_row(filename, label, idx, prob, where)
        rows += 1
        yield where, filename, label, idx, prob
    if rows == 0:
        if header:
            held = f"holds only a header line (line {header})"
        else:
            held = f"holds only blank lines ({blank})" if blank else "is empty"
        raise ImportFormatError(f"{path}: the file {held}; expected one line per image")


def _check_unique(path: Path, ids: IdHashes) -> None:
    """Raise naming the first line whose image repeats an earlier one."""
    clashes = ids.clashes()
    if not clashes:
        return
    seen: set[str] = set()
    for where, filename, *_ in _tsv_rows(path):
        image_id = PurePosixPath(filename).stem
        if hash(image_id) in clashes:
            if image_id in seen:
                raise ImportFormatError(f"{where}: image {image_id} appears twice")
            seen.add(image_id)


def read_tsv(path: str | Path, train_root: str | Path | None = None) -> Iterator[schema.ImageLabels]:
    """``labels`` records streamed from the authors' TSV; with ``train_root`` (the ImageNet train folder) the image
    sizes are read from the files' headers. Raises :class:`ImportFormatError` naming the line of anything malformed
    (a repeated image once the file has been read: the check keeps a hash per line, not the ids)."""
    path = Path(path)
    ids = IdHashes()
    for where, filename, label, idx, prob in _tsv_rows(path):
        image_id = PurePosixPath(filename).stem
        ids.add(image_id)
        width = height = None
        if train_root is not None:
            image_path = Path(train_root) / filename
            try:
                with Image.open(image_path) as image:
                    width, height = image.size
            except OSError as err:
                raise ImportFormatError(f"{where}: cannot read the size of {image_path} ({err})") from None
        yield schema.ImageLabels(
            image_id=image_id,
            path=filename,
            label=label,
            width=width,
            height=height,
            soft_classes=idx,
            soft_scores=prob,
        )
    _check_unique(path, ids)


def tsv_build_info(path: str | Path, version: str, train_root: str | Path | None = None) -> BuildInfo:
    """Build info of a TSV import: the file's sha256 and how it was read."""
    return BuildInfo(
        version=version,
        source="import of the authors' released multilabel_compressed.tsv",
        inputs={Path(path).name: "sha256:" + file_sha256(path)},
        parameters={"split": "train", "image_sizes_from": "ImageNet train folder" if train_root else "unknown"},
        models={"labeler": "authors' release (arXiv:2603.05729)"},
    )


def coco_rle(segmentation, height: int, width: int, where: str) -> dict:
    """A COCO compressed RLE ``{"size", "counts": bytes}`` from any COCO segmentation form."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), str):
        return {"size": list(segmentation["size"]), "counts": segmentation["counts"].encode("ascii")}
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        h, w = segmentation["size"]
        return mask_utils.frPyObjects(segmentation, h, w)
    if isinstance(segmentation, list) and segmentation:
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    raise ImportFormatError(f"{where}: segmentation is neither a COCO RLE nor a polygon list")


def decode_mask(segmentation, height: int, width: int, where: str) -> np.ndarray:
    """Any COCO segmentation form as a bool (height, width) mask; ValueError naming ``where`` if sizes differ."""
    from pycocotools import mask as mask_utils

    rle = coco_rle(segmentation, height, width, where)
    size = [int(v) for v in rle["size"]]
    if size != [height, width]:
        raise ValueError(f"{where}: mask is {size[0]} x {size[1]}, the image {height} x {width} (h x w)")
    return mask_utils.decode(rle).astype(bool)


def import_tsv(
    path: str | Path, output: str | Path, version: str, train_root: str | Path | None = None
) -> dict[str, Any]:
    """Write the TSV's ``labels`` config (train split) into the dataset folder ``output``; return its statistics."""
    rows = _tsv_rows(Path(path))
    next(rows)  # a file without image lines raises here, before anything is written
    rows.close()
    build = tsv_build_info(path, version, train_root)
    write_dataset(output, build, labels={"train": read_tsv(path, train_root)})
    return read_build_json(output)["configs"]["labels"]["splits"]["train"]["statistics"]
