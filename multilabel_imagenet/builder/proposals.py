"""Proposals as stored: resize to the original image, COCO RLE, box, area; merging configurations.

REFERENCE.md section 1 step 10 and DESIGN.md ("config proposals": size [h, w], counts, bbox [x, y, w, h],
area, source).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from multilabel_imagenet.builder.configs import DEFAULT_DEDUP_IOU


@dataclass(frozen=True)
class Proposal:
    """One object proposal of one image, as stored: COCO compressed RLE plus box, area and source config."""

    size: tuple[int, int]  # (height, width) of the original image
    counts: str  # COCO compressed RLE, ascii
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: int
    source: str  # the MaskCut configuration's name

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def rle(self) -> dict:
        """The pycocotools RLE object ({"size": [h, w], "counts": bytes})."""
        return {"size": [self.size[0], self.size[1]], "counts": self.counts.encode("ascii")}

    def decode(self) -> np.ndarray:
        """The mask as bool (height, width)."""
        return mask_utils.decode(self.rle()).astype(bool)

    def to_dict(self) -> dict:
        return {
            "size": list(self.size),
            "counts": self.counts,
            "bbox": list(self.bbox),
            "area": self.area,
            "source": self.source,
        }


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a bool mask to (height, width) as published: 0/255 image, bicubic, threshold at half its max."""
    if mask.shape == (height, width):
        return mask.astype(bool)
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BICUBIC))
    upper = int(resized.max())
    return resized > upper / 2.0 if upper else np.zeros((height, width), dtype=bool)


def encode(mask: np.ndarray, source: str) -> Proposal | None:
    """COCO RLE, box and area of a bool (height, width) mask at the original resolution; None if empty."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    area = int(mask_utils.area(rle))
    if area < 1:
        return None
    h, w = (int(v) for v in rle["size"])
    bbox = tuple(float(v) for v in mask_utils.toBbox(rle))
    return Proposal(size=(h, w), counts=rle["counts"].decode("ascii"), bbox=bbox, area=area, source=source)


def dedupe(proposals: Sequence[Proposal], iou_threshold: float = DEFAULT_DEDUP_IOU) -> list[Proposal]:
    """Greedy near-duplicate removal across configurations, keeping the first of each group.

    Proposals are taken in the given order (configuration order, then iteration order); one whose mask IoU
    with an already kept proposal of ANOTHER configuration exceeds ``iou_threshold`` is dropped. Proposals of
    the same configuration are disjoint by construction and never compared. ``iou_threshold >= 1`` keeps all.
    """
    if iou_threshold < 0.0:
        raise ValueError(f"iou_threshold must be >= 0, got {iou_threshold}")
    if not proposals:
        return []
    sizes = {p.size for p in proposals}
    if len(sizes) > 1:
        raise ValueError(f"proposals of one image must share one size, got {sorted(sizes)}")
    rles = [p.rle() for p in proposals]
    ious = mask_utils.iou(rles, rles, [0] * len(rles))
    kept: list[int] = []
    for i, p in enumerate(proposals):
        if all(proposals[j].source == p.source or ious[i, j] <= iou_threshold for j in kept):
            kept.append(i)
    return [proposals[i] for i in kept]


def merge(per_config: Iterable[Sequence[Proposal]], iou_threshold: float = DEFAULT_DEDUP_IOU) -> list[Proposal]:
    """Concatenate the proposals of several configurations of one image, then :func:`dedupe` them."""
    return dedupe([p for props in per_config for p in props], iou_threshold)
