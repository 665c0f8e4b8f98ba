"""Crop-aware targets: a RandomResizedCrop that returns its box, and each mask's fraction inside that box.

- :class:`RandomResizedCropWithBox` samples a crop as torchvision does and returns the crop box ``(x, y, w, h)``.
- :func:`crop_fractions` and :func:`crop_local` give the fraction of each mask inside a box by intersecting its
  compressed RLE with the box's (pycocotools; masks whose bbox is inside or outside the box need no RLE work).
  :func:`crop_local` also gives the crop-aware Local-Soft in sparse form (each mask's scores times its fraction).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils


class RandomResizedCropWithBox:
    """RandomResizedCrop (torchvision's sampling rule) that also returns the crop box ``(x, y, w, h)``."""

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: Image.Resampling = Image.Resampling.BILINEAR,
    ):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio, self.interpolation = scale, ratio, interpolation

    def sample_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A crop box for an image of ``width`` x ``height``: 10 tries at a random area and aspect ratio, then the
        central crop at the nearest allowed ratio (torch's RNG, so DataLoader workers are seeded as usual)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                x = int(torch.randint(0, width - w + 1, size=(1,)).item())
                y = int(torch.randint(0, height - h + 1, size=(1,)).item())
                return x, y, w, h
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif aspect > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, image: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
        x, y, w, h = box = self.sample_box(*image.size)
        return image.resize(self.size[::-1], self.interpolation, box=(x, y, x + w, y + h)), box


def _fractions(
    bbox: np.ndarray,
    area: np.ndarray,
    sizes: np.ndarray,
    counts: Callable[[int], bytes],
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Fraction of each mask inside ``box``, float32 [M]. A mask whose bbox straddles the box has its compressed
    RLE (``counts(i)``) intersected with the box's RLE (pycocotools, one box RLE per mask size)."""
    x, y, w, h = box
    out = np.zeros(len(area), dtype=np.float32)
    crops: dict[tuple[int, int], dict] = {}
    for i, ((bx, by, bw, bh), a) in enumerate(zip(np.asarray(bbox).tolist(), np.asarray(area).tolist(), strict=True)):
        if a <= 0 or bx >= x + w or by >= y + h or bx + bw <= x or by + bh <= y:
            continue
        if bx >= x and by >= y and bx + bw <= x + w and by + bh <= y + h:
            out[i] = 1.0
            continue
        height, width = size = (int(sizes[i][0]), int(sizes[i][1]))
        if size not in crops:
            crops[size] = mask_utils.frPyObjects(np.array([box], dtype=np.float64), height, width)[0]
        rle = {"size": [height, width], "counts": counts(i)}
        out[i] = float(mask_utils.area(mask_utils.merge([rle, crops[size]], intersect=True))) / a
    return out


def crop_fractions(masks: Sequence[Mapping[str, Any]], box: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each mask's area inside ``box`` (x, y, w, h), float32 [M].

    Masks whose bbox lies inside or outside the box need no RLE work; the others are intersected with the box
    as compressed RLEs (pycocotools), never decoded to pixels."""
    return _fractions(
        np.array([m["bbox"] for m in masks], dtype=np.float64).reshape(-1, 4),
        np.array([m["area"] for m in masks], dtype=np.int64),
        np.array([m["size"] for m in masks], dtype=np.int64).reshape(-1, 2),
        lambda i: masks[i]["counts"].encode("ascii"),
        box,
    )


def _weighted(fractions: np.ndarray, lengths: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Each mask's scores times its fraction inside the crop (products in float64, then float32)."""
    return (np.repeat(fractions.astype(np.float64), lengths) * scores.astype(np.float64)).astype(np.float32)


def crop_local(masks: Mapping[str, Any], m0: int, m1: int, box: tuple[int, int, int, int]):
    """Crop-aware Local-Soft of masks ``m0:m1`` of the mask views of :class:`.columns.Proposals`, in sparse form,
    classes possibly repeated (the dense scatter takes the max)."""
    counts_offsets, counts = masks["counts"]
    fractions = _fractions(
        masks["bbox"][m0:m1],
        masks["area"][m0:m1],
        masks["size"][m0:m1],
        lambda i: counts[counts_offsets[m0 + i] : counts_offsets[m0 + i + 1]].tobytes(),
        box,
    )
    class_offsets, cls = masks["classes"]
    score_offsets, scores = masks["scores"]
    lengths = np.diff(class_offsets[m0 : m1 + 1])
    scores = scores[score_offsets[m0] : score_offsets[m1]]
    return cls[class_offsets[m0] : class_offsets[m1]], _weighted(fractions, lengths, scores)
