"""Crop-aware targets: a RandomResizedCrop that returns its box, and each mask's fraction inside that box.

- :class:`RandomResizedCropWithBox` samples a crop as torchvision does and returns the crop box ``(x, y, w, h)``.
- :func:`crop_fractions` and :func:`crop_local` give the fraction of each mask inside a box by intersecting its
  compressed RLE with the box's (pycocotools; masks whose bbox is inside or outside the box need no RLE work).
  :func:`crop_local` also gives the crop-aware Local-Soft in sparse form (each mask's scores times its fraction).

The box's RLE is written directly (:func:`box_counts`, the string ``frPyObjects`` gives, which cost more than the
intersections), so an item costs one pycocotools merge and area per straddling mask.
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
        """A crop box for an image of ``width`` x ``height``: 10 tries at a uniform random area fraction in
        ``scale``, log-uniform aspect ratio in ``ratio`` and uniform position, then the central crop at the nearest
        allowed ratio (torchvision's rule). The draws come from torch's RNG in one call, so DataLoader workers are
        seeded as usual."""
        area = width * height
        (s0, s1), (r0, r1) = self.scale, (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for u_area, u_ratio, u_x, u_y in torch.rand(10, 4, dtype=torch.float64).tolist():
            target, aspect = area * (s0 + (s1 - s0) * u_area), math.exp(r0 + (r1 - r0) * u_ratio)
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(u_x * (width - w + 1)), int(u_y * (height - h + 1)), w, h
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


def _number(value: int) -> str:
    """One run-length delta in COCO's compressed RLE text: 5 bits a character from the lowest, 0x20 = more
    follow, the last character's 0x10 the sign, each character offset by 48."""
    out = []
    while True:
        c, value = value & 0x1F, value >> 5
        more = value != -1 if c & 0x10 else value != 0
        out.append(chr(c + 48 + (0x20 if more else 0)))
        if not more:
            return "".join(out)


def box_counts(box: tuple[int, int, int, int], height: int, width: int) -> bytes:
    """The compressed COCO RLE of the integer box ``(x, y, w, h)`` inside a ``height`` x ``width`` image, the
    bytes ``pycocotools.mask.frPyObjects`` gives. Column-major runs: zeros up to the box's first pixel, then per
    column ``h`` ones and ``height - h`` zeros, then the rest; after the first three runs COCO stores each run
    minus the one two before it, so the repeated columns are ``"0"`` each. A trailing empty run is left out."""
    x, y, w, h = box
    if h == height:  # whole columns: one run of ones
        runs = [x * height, w * height] + ([(width - x - w) * height] if x + w < width else [])
        return "".join(map(_number, runs)).encode("ascii")
    rest = height * width - x * height - y - (w - 1) * height - h
    if w == 1:
        text = _number(x * height + y) + _number(h) + (_number(rest) if rest else "")
    else:
        last = _number(rest - (height - h)) if rest else ""
        text = _number(x * height + y) + _number(h) + _number(height - h) + "0" * (2 * w - 3) + last
    return text.encode("ascii")


def _fractions(
    bbox: list,
    area: list,
    sizes: list,
    counts: Callable[[int], bytes],
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Fraction of each mask inside ``box``, float32 [M], from the masks' bboxes, areas and [h, w] sizes (Python
    lists). A mask whose bbox straddles the box has its compressed RLE (``counts(i)``) intersected with the box's
    (pycocotools); the others are 0 or 1 at once."""
    x, y, w, h = box
    x1, y1 = x + w, y + h
    out = [0.0] * len(area)
    crops: dict[tuple[int, int], dict] = {}
    for i, ((bx, by, bw, bh), a, size) in enumerate(zip(bbox, area, sizes, strict=True)):
        if a <= 0 or bx >= x1 or by >= y1 or bx + bw <= x or by + bh <= y:
            continue
        if bx >= x and by >= y and bx + bw <= x1 and by + bh <= y1:
            out[i] = 1.0
            continue
        crop = crops.get(key := (int(size[0]), int(size[1])))
        if crop is None:
            crop = crops[key] = {"size": list(key), "counts": box_counts(box, *key)}
        rle = {"size": crop["size"], "counts": counts(i)}
        out[i] = float(mask_utils.area(mask_utils.merge([rle, crop], intersect=True))) / a
    return np.array(out, dtype=np.float32)


def crop_fractions(masks: Sequence[Mapping[str, Any]], box: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each mask's area inside ``box`` (x, y, w, h), float32 [M].

    Masks whose bbox lies inside or outside the box need no RLE work; the others are intersected with the box
    as compressed RLEs (pycocotools), never decoded to pixels."""
    return _fractions(
        [m["bbox"] for m in masks],
        [m["area"] for m in masks],
        [m["size"] for m in masks],
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
        masks["bbox"][m0:m1].tolist(),
        masks["area"][m0:m1].tolist(),
        masks["size"][m0:m1].tolist(),
        lambda i: counts[counts_offsets[m0 + i] : counts_offsets[m0 + i + 1]].tobytes(),
        box,
    )
    class_offsets, cls = masks["classes"]
    score_offsets, scores = masks["scores"]
    lengths = class_offsets[m0 + 1 : m1 + 1] - class_offsets[m0:m1]
    scores = scores[score_offsets[m0] : score_offsets[m1]]
    return cls[class_offsets[m0] : class_offsets[m1]], _weighted(fractions, lengths, scores)
