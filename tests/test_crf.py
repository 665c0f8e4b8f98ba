"""Dense-CRF refinement (real pydensecrf) and the refinement self-check."""

from __future__ import annotations

import numpy as np
import pytest

from multilabel_imagenet.builder import crf, maskcut
from multilabel_imagenet.builder.configs import CRFParams


def disc_image(size: int = 96, patch: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image with a saturated disc whose edge does not follow the patch grid, the disc, and the blocky
    patch-level mask (patches at least half covered) upsampled to pixels."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 45.3) ** 2 + (xx - 50.7) ** 2 < 27.5**2
    rng = np.random.default_rng(0)
    image = np.where(disc[..., None], [220, 40, 30], [70, 90, 80]) + rng.integers(-8, 9, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    g = size // patch
    coverage = disc.reshape(g, patch, g, patch).mean(axis=(1, 3))
    (raw,) = maskcut.full_resolution([coverage >= 0.5], (size, size))
    return image, disc, raw


def test_crf_follows_an_image_edge_the_patch_grid_misses():
    image, disc, raw = disc_image()
    out = crf.dense_crf(image, raw)
    assert out.shape == raw.shape and out.dtype == bool
    assert (out != raw).sum() > 50
    assert crf.mask_iou(out, disc) > crf.mask_iou(raw, disc) + 0.03
    refined = crf.refine(image, raw, use_crf=True)
    assert refined is not None and crf.mask_iou(refined, raw) >= crf.SELF_CHECK_IOU


def test_published_parameters_are_the_defaults():
    p = CRFParams()
    assert (p.gaussian_sxy, p.gaussian_compat) == (3, 7)
    assert (p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat, p.iterations) == (50, 5, 10, 10)


def test_without_crf_holes_are_filled_and_the_self_check_drops_rings():
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    m[15:25, 15:25] = False  # hole of 100 in 900 - 100 pixels
    image = np.zeros((40, 40, 3), np.uint8)
    filled = crf.refine(image, m, use_crf=False)
    assert filled is not None and filled.sum() == 900
    ring = np.zeros((40, 40), bool)
    ring[2:38, 2:38] = True
    ring[4:36, 4:36] = False  # thin ring: filling it more than doubles it, IoU < 0.5
    assert crf.refine(image, ring, use_crf=False) is None
    assert crf.refine(image, np.zeros((40, 40), bool), use_crf=True) is None


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        crf.dense_crf(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="differs"):
        crf.dense_crf(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), bool))
