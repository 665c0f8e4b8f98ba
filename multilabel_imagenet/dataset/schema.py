"""The published dataset's configs: their columns as ``datasets.Features`` and the records the writer takes.

Config ``labels`` (default): one row per image with the image-level soft labels. Config ``proposals``: one row per
image with every MaskCut proposal (COCO RLE) and its labeler top-k. Class indices are ImageNet-1k indices in
sorted-wnid order; ClassLabel names are :func:`multilabel_imagenet.classes.unique_names` (two classes share the
name "crane" and two "maillot", so the plain names would not be unique).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import datasets

from multilabel_imagenet import classes, targets

CONFIGS = ("labels", "proposals")
DEFAULT_CONFIG = "labels"
SPLITS = ("train", "validation")
LABEL_THRESHOLD = targets.DEFAULT_TAU
"""A class enters the ``labels`` column when its soft score exceeds this (strictly, as Local-Hard in
:mod:`multilabel_imagenet.targets`; the paper's Table 5 counts labels at this threshold)."""
UNKNOWN_LABEL = -1
"""ClassLabel value of an image whose original label is unknown."""


@dataclass(frozen=True)
class Proposal:
    """One object proposal: a COCO compressed RLE mask, its box and the labeler's top-k classes."""

    size: tuple[int, int]
    """(height, width) of the mask, equal to the image's."""
    counts: str
    """COCO compressed RLE string (``pycocotools.mask.encode(...)["counts"].decode("ascii")``)."""
    bbox: tuple[float, float, float, float]
    """[x, y, w, h] in pixels."""
    area: int
    source: str
    """The MaskCut configuration that produced the mask (e.g. ``dinov3_b16``)."""
    classes: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class ImageLabels:
    """A row of the ``labels`` config. ``width``/``height``/``num_proposals`` may be None when the source lacks them
    (the authors' TSV). ``labels`` is derived by the writer: classes whose soft score is > LABEL_THRESHOLD."""

    image_id: str
    path: str
    label: int | None
    width: int | None
    height: int | None
    soft_classes: tuple[int, ...] = ()
    soft_scores: tuple[float, ...] = ()
    global_classes: tuple[int, ...] = ()
    global_scores: tuple[float, ...] = ()
    num_proposals: int | None = None


@dataclass(frozen=True)
class ImageProposals:
    """A row of the ``proposals`` config."""

    image_id: str
    width: int
    height: int
    masks: tuple[Proposal, ...] = ()


def class_label() -> datasets.ClassLabel:
    """The ImageNet-1k ClassLabel used by ``label`` and ``labels``."""
    return datasets.ClassLabel(names=list(classes.unique_names()))


@cache
def features(config: str) -> datasets.Features:
    """The ``datasets.Features`` of ``config`` (``labels`` or ``proposals``)."""
    if config == "labels":
        return datasets.Features(
            {
                "image_id": datasets.Value("string"),
                "path": datasets.Value("string"),
                "label": class_label(),
                "width": datasets.Value("int32"),
                "height": datasets.Value("int32"),
                "soft_classes": datasets.List(datasets.Value("int16")),
                "soft_scores": datasets.List(datasets.Value("float32")),
                "global_classes": datasets.List(datasets.Value("int16")),
                "global_scores": datasets.List(datasets.Value("float32")),
                "labels": datasets.List(class_label()),
                "num_proposals": datasets.Value("int32"),
            }
        )
    if config == "proposals":
        mask = {
            "size": datasets.List(datasets.Value("int32"), length=2),
            "counts": datasets.Value("string"),
            "bbox": datasets.List(datasets.Value("float32"), length=4),
            "area": datasets.Value("int64"),
            "source": datasets.Value("string"),
            "classes": datasets.List(datasets.Value("int16")),
            "scores": datasets.List(datasets.Value("float16")),
        }
        return datasets.Features(
            {
                "image_id": datasets.Value("string"),
                "width": datasets.Value("int32"),
                "height": datasets.Value("int32"),
                "masks": datasets.List(mask),
            }
        )
    raise ValueError(f"unknown config {config!r}; the configs are {', '.join(CONFIGS)}")


def labels_row(record: ImageLabels) -> dict:
    """``record`` as a ``labels`` row: soft classes sorted by score (descending, ties by class), ``labels`` derived."""
    order = sorted(range(len(record.soft_classes)), key=lambda i: (-record.soft_scores[i], record.soft_classes[i]))
    soft_classes = [int(record.soft_classes[i]) for i in order]
    soft_scores = [float(record.soft_scores[i]) for i in order]
    return {
        "image_id": record.image_id,
        "path": record.path,
        "label": UNKNOWN_LABEL if record.label is None else int(record.label),
        "width": record.width,
        "height": record.height,
        "soft_classes": soft_classes,
        "soft_scores": soft_scores,
        "global_classes": [int(c) for c in record.global_classes],
        "global_scores": [float(s) for s in record.global_scores],
        "labels": sorted(c for c, s in zip(soft_classes, soft_scores, strict=True) if s > LABEL_THRESHOLD),
        "num_proposals": record.num_proposals,
    }


def proposals_row(record: ImageProposals) -> dict:
    """``record`` as a ``proposals`` row."""
    return {
        "image_id": record.image_id,
        "width": record.width,
        "height": record.height,
        "masks": [
            {
                "size": [int(m.size[0]), int(m.size[1])],
                "counts": m.counts,
                "bbox": [float(v) for v in m.bbox],
                "area": int(m.area),
                "source": m.source,
                "classes": [int(c) for c in m.classes],
                "scores": [float(s) for s in m.scores],
            }
            for m in record.masks
        ],
    }
