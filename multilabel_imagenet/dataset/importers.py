"""Importers: published annotation files -> records of the dataset folder, so users get ``load_dataset`` today.

- :func:`read_tsv`: the authors' ``multilabel/multilabel_compressed.tsv``, one line per train image,
  ``filename<TAB>gt_index<TAB>idx_list<TAB>prob_list`` (e.g. ``n01440764/n01440764_10042.JPEG  0  0,391
  0.2654,1.0000``): filename relative to the train root, class indices in sorted-wnid order, comma-separated
  lists (possibly empty) of the classes with non-zero probability. The original label is not forced.
  These become ``labels`` rows (no width/height unless an ImageNet root is given; no whole-image prediction).
- :func:`read_cutler`: CutLER's COCO JSON of MaskCut pseudo-masks (e.g. ``imagenet_train_fixsize480_tau0.15_N3
  .json``): ``images`` with ``file_name`` ``<wnid>/<stem>.JPEG``, ``annotations`` with a COCO RLE
  ``segmentation``. These become ``proposals`` rows without classes. CutLER writes each image's width and height
  swapped; the masks' RLE size is taken as the truth and the swap is undone (and counted).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from multilabel_imagenet import classes
from multilabel_imagenet.dataset import schema
from multilabel_imagenet.dataset.writer import BuildInfo, file_sha256, read_build_json, write_dataset


class ImportFormatError(ValueError):
    """An input file does not have the published format; the message names the file, the line or entry, and why."""


def _floats(text: str, where: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",")) if text.strip() else ()
    except ValueError:
        raise ImportFormatError(f"{where}: probabilities {text!r} are not comma-separated numbers") from None


def _ints(text: str, where: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",")) if text.strip() else ()
    except ValueError:
        raise ImportFormatError(f"{where}: class indices {text!r} are not comma-separated integers") from None


def _parse_tsv_line(line: str, where: str) -> tuple[str, int, tuple[int, ...], tuple[float, ...]]:
    fields = line.split("\t") if "\t" in line else line.split()
    if not 2 <= len(fields) <= 4:
        raise ImportFormatError(
            f"{where}: expected filename, gt_index, idx_list, prob_list; found {len(fields)} fields"
        )
    fields += [""] * (4 - len(fields))
    filename, gt, idx, prob = (f.strip() for f in fields)
    try:
        label = int(gt)
    except ValueError:
        raise ImportFormatError(f"{where}: gt_index {gt!r} is not an integer") from None
    return filename, label, _ints(idx, where), _floats(prob, where)


def _check_tsv_row(filename: str, label: int, idx: tuple, prob: tuple, where: str) -> None:
    if not 0 <= label < classes.NUM_CLASSES:
        raise ImportFormatError(f"{where}: gt_index {label} is outside 0..{classes.NUM_CLASSES - 1}")
    folder = PurePosixPath(filename).parent.name
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


def read_tsv(path: str | Path, train_root: str | Path | None = None) -> Iterator[schema.ImageLabels]:
    """``labels`` records from the authors' TSV; with ``train_root`` (the ImageNet train folder) the image sizes
    are read from the files' headers. Raises :class:`ImportFormatError` naming the line of anything malformed."""
    path = Path(path)
    seen: set[str] = set()
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\r\n")
            where = f"{path}:{number}"
            if not line.strip() or (number == 1 and line.split()[0].lower() == "filename"):
                continue
            filename, label, idx, prob = _parse_tsv_line(line, where)
            _check_tsv_row(filename, label, idx, prob, where)
            image_id = PurePosixPath(filename).stem
            if image_id in seen:
                raise ImportFormatError(f"{where}: image {image_id} appears twice")
            seen.add(image_id)
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


def tsv_build_info(path: str | Path, version: str, train_root: str | Path | None = None) -> BuildInfo:
    """Build info of a TSV import: the file's sha256 and how it was read."""
    return BuildInfo(
        version=version,
        source="import of the authors' released multilabel_compressed.tsv",
        inputs={Path(path).name: "sha256:" + file_sha256(path)},
        parameters={"split": "train", "image_sizes_from": "ImageNet train folder" if train_root else "unknown"},
        models={"labeler": "authors' release (arXiv:2603.05729)"},
    )


@dataclass
class CutlerImport:
    """Result of :func:`read_cutler`: the ``proposals`` records and what was repaired."""

    records: list[schema.ImageProposals]
    swapped_sizes: int = 0
    """Images whose width/height entry was swapped relative to their masks (CutLER's known bug)."""
    masks_per_image: Counter = field(default_factory=Counter)


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


def read_cutler(path: str | Path, source: str | None = None) -> CutlerImport:
    """``proposals`` records (train split) from a CutLER COCO JSON; ``source`` names the MaskCut configuration
    (default: the file's stem). Raises :class:`ImportFormatError` naming the entry of anything inconsistent."""
    from pycocotools import mask as mask_utils

    path = Path(path)
    source = source or path.stem
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ImportFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ImportFormatError(f"{path}: not a COCO file (no `images` list)")
    images: dict = {}
    for i, image in enumerate(data["images"]):
        try:
            images[image["id"]] = (PurePosixPath(image["file_name"]).stem, int(image["width"]), int(image["height"]))
        except (KeyError, TypeError, ValueError):
            raise ImportFormatError(f"{path}: images[{i}] lacks an id, file_name, width or height") from None
    masks: dict = {key: [] for key in images}
    for i, ann in enumerate(data.get("annotations", [])):
        where = f"{path}: annotations[{i}] (id {ann.get('id')})"
        if ann.get("image_id") not in images:
            raise ImportFormatError(f"{where}: image_id {ann.get('image_id')!r} is not in `images`")
        image_id, width, height = images[ann["image_id"]]
        rle = coco_rle(ann.get("segmentation"), height, width, where)
        size = tuple(int(v) for v in rle["size"])
        if size not in ((height, width), (width, height)):
            raise ImportFormatError(
                f"{where}: mask size [h, w] = {list(size)} disagrees with image {image_id} ({width}x{height} w x h)"
            )
        bbox = tuple(float(v) for v in mask_utils.toBbox(rle))
        masks[ann["image_id"]].append(
            schema.Proposal(size, rle["counts"].decode("ascii"), bbox, int(mask_utils.area(rle)), source)
        )
    # CutLER writes width/height swapped for every image; when every image with masks shows the swap, undo it
    # for the images without masks as well.
    swapped = {key for key, found in masks.items() if found and found[0].size == images[key][1:] and _oblong(found)}
    consistent = sum(1 for key, found in masks.items() if found and found[0].size == images[key][:0:-1])
    whole_file = bool(swapped) and consistent == 0
    result = CutlerImport(records=[], swapped_sizes=len(swapped))
    seen: set[str] = set()
    for key, (image_id, width, height) in images.items():
        if image_id in seen:
            raise ImportFormatError(f"{path}: image {image_id} appears twice in `images`")
        seen.add(image_id)
        found = masks[key]
        if key in swapped or (whole_file and not found):
            width, height = height, width
        for j, m in enumerate(found):
            if m.size != (height, width):
                raise ImportFormatError(
                    f"{path}: image {image_id}: mask {j} has size [h, w] = {list(m.size)} but the image is "
                    f"{height}x{width} (height x width)"
                )
        result.masks_per_image[len(found)] += 1
        result.records.append(schema.ImageProposals(image_id, width, height, tuple(found)))
    return result


def _oblong(found: list[schema.Proposal]) -> bool:
    return found[0].size[0] != found[0].size[1]


def cutler_build_info(path: str | Path, version: str, source: str, swapped: int) -> BuildInfo:
    """Build info of a CutLER import: the file's sha256, the configuration name and the repairs made."""
    return BuildInfo(
        version=version,
        source="import of CutLER's MaskCut COCO JSON",
        inputs={Path(path).name: "sha256:" + file_sha256(path)},
        parameters={"split": "train", "source": source, "swapped_sizes_repaired": swapped},
        models={"maskcut": "CutLER MaskCut (see the file name for backbone, tau and N)"},
    )


def import_tsv(
    path: str | Path, output: str | Path, version: str, train_root: str | Path | None = None
) -> dict[str, Any]:
    """Write the TSV's ``labels`` config (train split) into the dataset folder ``output``; return its statistics."""
    build = tsv_build_info(path, version, train_root)
    write_dataset(output, build, labels={"train": read_tsv(path, train_root)})
    return read_build_json(output)["configs"]["labels"]["splits"]["train"]["statistics"]


def import_cutler(path: str | Path, output: str | Path, version: str, source: str | None = None) -> CutlerImport:
    """Write the CutLER file's ``proposals`` config (train split) into the dataset folder ``output``."""
    source = source or Path(path).stem
    result = read_cutler(path, source)
    write_dataset(
        output, cutler_build_info(path, version, source, result.swapped_sizes), proposals={"train": result.records}
    )
    return result
