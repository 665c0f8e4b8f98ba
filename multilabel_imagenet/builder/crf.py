"""Dense-CRF refinement of a MaskCut mask and the post-refinement self-check (REFERENCE.md section 1 step 9)."""

from __future__ import annotations

import numpy as np
import pydensecrf.densecrf as dcrf
from scipy import ndimage

from multilabel_imagenet.builder.configs import CRFParams

# A refined mask that overlaps its raw mask with IoU below this is dropped (REFERENCE.md section 1 step 9).
SELF_CHECK_IOU = 0.5


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 0.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def dense_crf(image: np.ndarray, mask: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine a binary mask on its (resized) RGB image with a fully connected CRF (pydensecrf).

    Unary: -log softmax over the logits [1 - m, m] per pixel; pairwise: a Gaussian (position) kernel and a
    bilateral (position + colour) kernel; mean-field inference, then the per-pixel argmax. Returns bool (H, W).
    """
    params = params or CRFParams()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
    h, w = mask.shape
    fg = mask.astype(np.float64)
    logits = np.stack([1.0 - fg, fg])
    logits -= logits.max(axis=0, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=0, keepdims=True)
    unary = np.ascontiguousarray(-np.log(probs).reshape(2, -1), dtype=np.float32)
    crf = dcrf.DenseCRF2D(w, h, 2)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.require(image, requirements=["C", "W"]),  # pydensecrf needs a writable buffer
        compat=params.bilateral_compat,
    )
    q = np.asarray(crf.inference(params.iterations)).reshape(2, h, w)
    return q.argmax(axis=0).astype(bool)


def refine(image: np.ndarray, mask: np.ndarray, use_crf: bool, params: CRFParams | None = None) -> np.ndarray | None:
    """Step 9: optional dense CRF, fill holes, then drop the mask (None) if IoU(refined, raw) < 0.5."""
    if not mask.any():
        return None
    refined = dense_crf(image, mask, params) if use_crf else mask
    refined = ndimage.binary_fill_holes(refined)
    if mask_iou(refined, mask) < SELF_CHECK_IOU:
        return None
    return refined
