"""Classifying one region of one image with the region labeler (paper Supp. F.5), and MaskCut on demand.

:class:`RegionLabeler` loads a labeler checkpoint and its backbone; ``classify(image, box=...)`` or
``classify(image, mask=...)`` returns the head's ranked classes for that region. The region is pooled exactly as
the build labels a proposal: both call :func:`labeler.rank_masks` (mask projected onto the backbone's patch grid,
patch tokens under it averaged, head's softmax ranked). A box is the mask of the pixels inside it.

:class:`MaskCutProposer` runs the MaskCut configurations of a preset on one image and merges their proposals as
``build discover`` does, for picking a region among proposals of an image that has none stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multilabel_imagenet import classes, images
from multilabel_imagenet.builder import backbones, configs, labeler, maskcut, proposals

ImageLike = Image.Image | np.ndarray | str | Path
"""An RGB image: PIL, H x W x 3 uint8 array, or a file (decoded by :func:`images.decode_image`)."""


@dataclass(frozen=True)
class RankedClass:
    """One class of a region's ranking: ImageNet-1k index, wnid, first synonym, softmax probability."""

    index: int
    wnid: str
    name: str
    probability: float


def as_array(image: ImageLike) -> np.ndarray:
    """``image`` as an H x W x 3 uint8 array (files are decoded, never unpickled)."""
    if isinstance(image, str | Path):
        image = images.decode_image(image)
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got shape {image.shape} {image.dtype}")
    return image


def box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """Bool (height, width) mask of the pixels whose centres lie in ``box`` = (x0, y0, x1, y1), in pixels (the
    corners in any order); ValueError when that is no pixel."""
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {list(box)}")
    x0, x1 = sorted(float(v) for v in (box[0], box[2]))
    y0, y1 = sorted(float(v) for v in (box[1], box[3]))
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    mask = ((rows >= y0) & (rows <= y1))[:, None] & ((cols >= x0) & (cols <= x1))[None, :]
    if not mask.any():
        raise ValueError(f"box {[x0, y0, x1, y1]} covers no pixel of the {width} x {height} image")
    return mask


class RegionLabeler:
    """A labeler checkpoint ready to classify regions. ``weights``: local weights of its backbone (a safetensors
    file for a timm model, a folder for transformers), as the build's ``weights`` setting; else timm's download."""

    def __init__(
        self, checkpoint: str | Path, device: str | torch.device = "cpu", weights: str | Path | None = None
    ) -> None:
        self.head, self.config, _, _ = labeler.load_checkpoint(checkpoint)
        self.device = torch.device(device)
        self.head.to(self.device).eval()
        self.extractor = backbones.load_backbone(self.config.backbone, "patch", weights=weights, device=self.device)

    def tokens(self, image: ImageLike) -> torch.Tensor:
        """The backbone's patch tokens [h, w, d] of one image (float32, CPU); reuse them for several regions."""
        return backbones.patch_tokens(self.extractor, [as_array(image)], self.config.input_size, self.device)[0]

    def rank(self, tokens: torch.Tensor, masks: np.ndarray, k: int = 5) -> list[list[RankedClass]]:
        """The ``k`` best classes of each of the [M, H, W] region masks of the image whose ``tokens`` are given."""
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3:
            raise ValueError(f"masks must be [M, H, W], got shape {list(masks.shape)}")
        empty = [i for i, m in enumerate(masks) if not m.any()]
        if empty:
            raise ValueError(f"region masks {empty} are empty")
        idx, scores = labeler.rank_masks(self.head, tokens, masks, k, self.config.mask_threshold)
        return [
            [
                RankedClass(int(c), classes.wnid_of(int(c)), classes.name_of(int(c)), float(s))
                for c, s in zip(i, p, strict=True)
            ]
            for i, p in zip(idx, scores, strict=True)
        ]

    def classify(
        self,
        image: ImageLike,
        *,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        k: int = 5,
        tokens: torch.Tensor | None = None,
    ) -> list[RankedClass]:
        """The ``k`` best classes of the region given by ``box`` (x0, y0, x1, y1 in pixels) or ``mask`` (bool,
        the image's H x W), best first. ``tokens`` (from :meth:`tokens`) skips the backbone."""
        array = as_array(image)
        height, width = array.shape[:2]
        if (box is None) == (mask is None):
            raise ValueError("give exactly one of box= and mask=")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (height, width):
                raise ValueError(f"mask is {mask.shape[0]} x {mask.shape[1]}, the image {height} x {width} (h x w)")
        else:
            mask = box_mask(box, height, width)  # type: ignore[arg-type]
        return self.rank(self.tokens(array) if tokens is None else tokens, mask[None], k)[0]


class MaskCutProposer:
    """MaskCut of every configuration of a preset (see ``multilabel-imagenet configs``), or of the given
    configurations, on single images, merged and deduplicated as in ``build discover``; the extractors load on the
    first call. ``weights``: backbone name -> local weights."""

    def __init__(
        self,
        preset: str | Sequence[configs.MaskCutConfig] = "synthetic",
        device: str | torch.device = "cpu",
        weights: Mapping[str, str | Path] | None = None,
        dedup_iou: float = configs.DEFAULT_DEDUP_IOU,
    ) -> None:
        self.configs = configs.preset(preset) if isinstance(preset, str) else tuple(preset)
        self.device = torch.device(device)
        self.weights = dict(weights or {})
        self.dedup_iou = dedup_iou
        self._ensemble: maskcut.Ensemble | None = None

    def __call__(self, image: ImageLike) -> list[proposals.Proposal]:
        """The merged proposals of one image."""
        array = as_array(image)
        if self._ensemble is None:
            loaded: dict = {}
            extractors = [
                backbones.cached_extractor(loaded, c.backbone, c.feature, self.weights, self.device)
                for c in self.configs
            ]
            self._ensemble = maskcut.Ensemble(self.configs, extractors, self.device, dedup_iou=self.dedup_iou)
        resized = {s: backbones.resized_batch([array], s) for s in self._ensemble.input_sizes}
        return self._ensemble.submit(resized, [array.shape[:2]])()[0]
