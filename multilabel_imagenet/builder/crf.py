"""Dense-CRF refinement of MaskCut masks and the post-refinement self-check (REFERENCE.md section 1 step 9).

Two implementations of the same fully connected CRF (Kraehenbuehl & Koltun 2011) with the published parameters:

* :func:`dense_crf_torch` — torch, batched over images and masks, on the CPU or CUDA: the default backend. Same
  unaries, kernels, Potts compatibilities, symmetric kernel normalisation and mean-field updates as pydensecrf,
  with the message passing on the same permutohedral-lattice approximation (:mod:`permutohedral`); its masks
  agree with pydensecrf's (benchmarks/crf_agreement.py, pinned by tests/test_crf.py).
* :func:`dense_crf` — pydensecrf, one mask at a time on one CPU core: the published code, the exact reference.
  It is the optional extra ``pydensecrf`` (:data:`PYDENSECRF_INSTALL`): pydensecrf2 ships no wheels and does not
  compile on Python 3.13, so the package does not require it; without it this backend raises
  :class:`BackendUnavailableError` with the install command.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from scipy import ndimage

from multilabel_imagenet.builder.configs import CRFParams
from multilabel_imagenet.builder.permutohedral import Lattice

# A refined mask that overlaps its raw mask with IoU below this is dropped (REFERENCE.md section 1 step 9).
SELF_CHECK_IOU = 0.5


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 0.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


PYDENSECRF_INSTALL = "pip install 'multilabel-imagenet[pydensecrf]'"
"""The command that adds the pydensecrf reference backend (in a source checkout: ``pip install -e '.[pydensecrf]'``)."""


class BackendUnavailableError(ImportError, ValueError):
    """A CRF backend was selected whose optional package is not installed; the message gives the install command.
    Also a ValueError (a setting this environment cannot honour), so callers that report bad settings report it."""


def load_pydensecrf():
    """The ``pydensecrf.densecrf`` module, or :class:`BackendUnavailableError` saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise BackendUnavailableError(
            f"crf_backend 'pydensecrf' (the published reference CRF) needs the optional pydensecrf2 package, which "
            f"is not installed ({err}). Install it with: {PYDENSECRF_INSTALL} (from a checkout: pip install -e "
            "'.[pydensecrf]'; it compiles from source, needs a C++ compiler, and does not build on Python 3.13), "
            "or use crf_backend 'torch', the default, whose masks agree with it"
        ) from None
    return dcrf


def check_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailableError` now if ``backend`` (a ``configs.CRF_BACKENDS`` name) cannot run here,
    so that a build can refuse before its first batch rather than at its first CRF."""
    if backend == "pydensecrf":
        load_pydensecrf()


def dense_crf(image: np.ndarray, mask: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine a binary mask on its (resized) RGB image with a fully connected CRF (pydensecrf, the optional extra:
    :class:`BackendUnavailableError` without it).

    Unary: -log softmax over the logits [1 - m, m] per pixel; pairwise: a Gaussian (position) kernel and a
    bilateral (position + colour) kernel; mean-field inference, then the per-pixel argmax. Returns bool (H, W).
    """
    params = params or CRFParams()
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape[:2]}")
    dcrf = load_pydensecrf()
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


def _normaliser(lattice: Lattice) -> tuple[torch.Tensor, torch.Tensor]:
    """pydensecrf's NORMALIZE_SYMMETRIC: n = 1 / sqrt(K 1) per point, and the filtered constant n K(n 1)."""
    ones = torch.ones(lattice.num_points, 1, device=lattice.offsets.device)
    norm = 1.0 / torch.sqrt(lattice.filter(ones) + 1e-20)
    return norm, norm * lattice.filter(norm)


@functools.lru_cache(maxsize=8)
def _gaussian(
    h: int, w: int, sxy: float, device: torch.device
) -> tuple[torch.Tensor, Lattice, torch.Tensor, torch.Tensor]:
    """The pixel positions (x, y) of an h x w image, the Gaussian kernel's lattice over them and its normaliser.

    They depend on nothing but the size, so they are built once per size and device (every image of a
    MaskCut configuration has the same size) and shared, read-only, by all later calls.
    """
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    xy = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)  # pydensecrf's feature order: x, y
    lattice = Lattice(xy / sxy)
    return (xy, lattice, *_normaliser(lattice))


@torch.no_grad()
def dense_crf_torch(images: torch.Tensor, masks: torch.Tensor, params: CRFParams | None = None) -> torch.Tensor:
    """Refine K binary masks on each of B images at once: ``images`` (B, H, W, 3) uint8, ``masks`` (B, K, H, W)
    bool, both on the device to run on; returns bool (B, K, H, W) there.

    Mean-field inference of :func:`dense_crf`'s CRF. With two labels and Potts compatibilities only the
    foreground marginal q is needed: the background's filtered marginal is K(n) - K(n q) by linearity, so
    each update is q <- sigmoid(u + sum_k w_k (2 n_k K_k(n_k q) - n_k K_k(n_k))), u the unary logit difference.
    The Gaussian kernel's lattice depends only on pixel positions and is shared by the whole batch; each image
    has its own bilateral lattice. All-empty masks (padding) stay empty.
    """
    params = params or CRFParams()
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
        raise ValueError(f"images must be B x H x W x 3 uint8, got {tuple(images.shape)} {images.dtype}")
    b, h, w, _ = images.shape
    if masks.ndim != 4 or masks.shape[0] != b or tuple(masks.shape[2:]) != (h, w):
        raise ValueError(f"masks must be B x K x H x W = {b} x K x {h} x {w}, got {tuple(masks.shape)}")
    k, device = masks.shape[1], images.device
    xy, gauss_lattice, gauss_norm, gauss_const = _gaussian(h, w, params.gaussian_sxy, device)
    rgb = images.reshape(b * h * w, 3).float() / params.bilateral_srgb
    position = (xy / params.bilateral_sxy).repeat(b, 1)
    groups = torch.arange(b, device=device).repeat_interleave(h * w)
    bilateral = Lattice(torch.cat([position, rgb], dim=1), groups)
    bil_norm, bil_const = _normaliser(bilateral)

    # [B*K, H*W] per mask -> the Gaussian lattice filters [H*W, B*K]; the bilateral one [B*H*W, K].
    fg = masks.reshape(b, k, h * w).float()
    unary = (2.0 * fg - 1.0).permute(0, 2, 1)  # log softmax[1-m, m]: fg minus bg logit = m - (1 - m)
    gauss_const, bil_const = gauss_const.reshape(1, h * w, 1), bil_const.reshape(b, h * w, 1)
    base = unary - (params.gaussian_compat * gauss_const + params.bilateral_compat * bil_const)
    gauss_norm = gauss_norm.reshape(1, h * w, 1)
    logit = unary
    for _ in range(params.iterations):
        q = torch.sigmoid(logit)  # [B, H*W, K]
        g_in = (q * gauss_norm).permute(1, 0, 2).reshape(h * w, b * k)
        g_out = gauss_lattice.filter(g_in).reshape(h * w, b, k).permute(1, 0, 2) * gauss_norm
        bil_out = (bilateral.filter(q.reshape(b * h * w, k) * bil_norm) * bil_norm).reshape(b, h * w, k)
        logit = base + 2.0 * (params.gaussian_compat * g_out + params.bilateral_compat * bil_out)
    out = (logit > 0).permute(0, 2, 1).reshape(b, k, h, w)
    return out & masks.flatten(2).any(2)[:, :, None, None]


# 4-connectivity: scipy.ndimage's default structure in 2-D, used for the background in hole filling and for
# the seed's component in MaskCut's step 6.
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """The same as ``scipy.ndimage.binary_fill_holes(mask)`` for a 2-D bool mask, about 35x faster on MaskCut's
    masks (benchmarks/paper_bounds.py).

    scipy grows the outside by repeated dilation; here one labelling pass of the background, cropped to the
    mask's bounding box plus a 1-pixel margin (a hole lies inside the box, and the margin is outside), keeps
    the components that touch the crop's border and fills the rest.
    """
    out = mask.copy()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return out
    y0, y1, x0, x1 = max(rows[0] - 1, 0), rows[-1] + 2, max(cols[0] - 1, 0), cols[-1] + 2
    background, count = ndimage.label(~mask[y0:y1, x0:x1], structure=FOUR_CONNECTED)
    outside = np.zeros(count + 1, dtype=bool)
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        outside[edge] = True
    outside[0] = False  # label 0: the mask itself
    out[y0:y1, x0:x1] = ~outside[background]
    return out


def self_check(refined: np.ndarray, raw: np.ndarray) -> np.ndarray | None:
    """After refinement: fill holes, then drop the mask (None) if IoU(filled, raw) < 0.5."""
    filled = fill_holes(refined)
    return None if mask_iou(filled, raw) < SELF_CHECK_IOU else filled


def refine(image: np.ndarray, mask: np.ndarray, use_crf: bool, params: CRFParams | None = None) -> np.ndarray | None:
    """Step 9 with pydensecrf: optional dense CRF, fill holes, then drop the mask (None) if IoU(refined, raw) <
    0.5."""
    if not mask.any():
        return None
    return self_check(dense_crf(image, mask, params) if use_crf else mask, mask)
