"""Iterative MaskCut (CutLER; paper Supp. A.1), step by step as in REFERENCE.md section 1 steps 3-10.

* :func:`maskcut_patches` runs steps 3-7 on given features (T x d on an h' x w' grid), no backbone needed.
* :func:`full_resolution` runs step 8 (nearest upsampling, disjointness), :func:`crf.refine` step 9, and
  :mod:`proposals` step 10.
* :func:`discover` runs one configuration on a batch of images end to end.

One point the published code leaves to chance is fixed here: the sign of the eigenvector. LAPACK returns x or
-x arbitrarily, and the published corner rule is not sign-symmetric (when the largest-magnitude entry sits on
the side holding >= 3 corners, x selects the other side and -x selects the seed's side). We orient x so that
its largest-magnitude entry is positive before the rules of step 5 run; then the seed's side is the object
unless it holds three or four corners, which is the rule as the paper states it (Supp. A.1 (a), (b)).
Both solvers go through the same orientation, so they agree wherever their eigenvectors agree.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from multilabel_imagenet.builder import ncut
from multilabel_imagenet.builder.backbones import Extractor, preprocess
from multilabel_imagenet.builder.configs import CRFParams, MaskCutConfig
from multilabel_imagenet.builder.crf import mask_iou, refine
from multilabel_imagenet.builder.proposals import Proposal, encode, resize_mask

# REFERENCE.md section 1 step 7: from the 2nd iteration on, a mask is dropped when its IoU with the previous
# iteration's mask exceeds 0.5 or its area is at most 1% of the grid.
DROP_IOU = 0.5
DROP_AREA_FRACTION = 0.01
# scipy.ndimage.label's default structure in 2-D: 4-connectivity (step 6).
FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


# Entries of x within this fraction of max|x| of the maximum count as tied, and ties go to the lowest patch
# index (numpy's argmax rule for exact ties). Patches masked out earlier have equal x in exact arithmetic;
# without this, float noise (1e-16 in the exact solver, ~1e-6 in the fast one) would pick among them at random.
TIE_RTOL = 1e-4


def first_argmax(v: np.ndarray) -> int:
    """Index of the first entry of v within TIE_RTOL * max|v| of max(v)."""
    scale = float(np.abs(v).max())
    return int(np.flatnonzero(v >= v.max() - TIE_RTOL * scale)[0])


def orient(x: np.ndarray) -> np.ndarray:
    """x with the sign fixed so that its largest-magnitude entry is positive (see the module docstring)."""
    return -x if x[first_argmax(np.abs(x))] < 0 else x


def seed_component(x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Steps 5-6: bipartition x at its mean, pick the object side and keep the seed's 4-connected component.

    The corner rule is evaluated on the bipartition before any reversal. Returns bool (h', w').
    """
    h, w = grid
    x = orient(np.asarray(x, dtype=np.float64))
    candidate = x > np.sum(x) / x.size
    seed = first_argmax(np.abs(x))
    grid_candidate = candidate.reshape(h, w)
    corners = int(grid_candidate[0, 0]) + int(grid_candidate[0, -1]) + int(grid_candidate[-1, 0])
    corners += int(grid_candidate[-1, -1])
    if corners >= 3 or not candidate[seed]:
        x, candidate = -x, ~candidate
    seed = first_argmax(x)
    labels, _ = ndimage.label(candidate.reshape(h, w), structure=FOUR_CONNECTED)
    seed_label = labels.flat[seed]
    if seed_label == 0:  # cannot happen for a finite x; never return the background as an object
        return np.zeros((h, w), dtype=bool)
    return labels == seed_label


def _check_features(features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if features.ndim == 4:  # (B, h', w', d)
        if tuple(features.shape[1:3]) != tuple(grid):
            raise ValueError(f"features grid {tuple(features.shape[1:3])} differs from grid {grid}")
        features = features.flatten(1, 2)
    if features.ndim != 3:
        raise ValueError(f"features must be (B, T, d) or (B, h', w', d), got shape {tuple(features.shape)}")
    h, w = grid
    if h < 1 or w < 1 or features.shape[1] != h * w:
        raise ValueError(f"features have {features.shape[1]} patches, grid {grid} needs {h * w}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    return features


def maskcut_patches(
    features: torch.Tensor,
    grid: tuple[int, int],
    tau: float,
    n: int,
    solver: ncut.Solver = ncut.ncut_exact,
    eps: float = ncut.EPS,
) -> list[list[np.ndarray]]:
    """Steps 3-7 for a batch: N patch masks per image (bool (h', w'); dropped iterations are empty).

    ``features`` is (B, T, d) or (B, h', w', d), row-major over the grid. Images advance through the N
    iterations together so that one solver call serves the whole batch per iteration. Patches taken by an
    earlier kept mask get zero features (they stay in the graph with affinity eps). A dropped mask paints
    nothing, so the next iteration sees the same graph and its eigenvector is reused.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    feats = _check_features(features, grid).float().clone()
    b, t, _ = feats.shape
    h, w = grid
    masks: list[list[np.ndarray]] = [[] for _ in range(b)]
    previous = [np.zeros((h, w), dtype=bool) for _ in range(b)]
    vectors: list[np.ndarray | None] = [None] * b
    changed = list(range(b))  # images whose graph changed since their last solve
    for it in range(n):
        if changed:
            solved = solver(ncut.affinity(feats[changed], tau, eps))
            for i, x in zip(changed, solved, strict=True):
                vectors[i] = x
        changed = []
        for i in range(b):
            x = vectors[i]
            mask = np.zeros((h, w), dtype=bool) if x is None else seed_component(x, grid)
            if it >= 1 and (mask_iou(previous[i], mask) > DROP_IOU or mask.sum() <= DROP_AREA_FRACTION * t):
                mask = np.zeros((h, w), dtype=bool)
            if mask.any():
                feats[i, torch.from_numpy(mask.reshape(-1)).to(feats.device)] = 0.0
                changed.append(i)
            previous[i] = mask
            masks[i].append(mask)
    return masks


def full_resolution(patch_masks: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Step 8: nearest upsampling of each (h', w') mask to ``size`` = (H, W), minus all earlier masks."""
    out: list[np.ndarray] = []
    taken = np.zeros(size, dtype=bool)
    for m in patch_masks:
        rows = (np.arange(size[0]) * m.shape[0]) // size[0]  # torch 'nearest': floor(dst * in / out)
        cols = (np.arange(size[1]) * m.shape[1]) // size[1]
        up = m[rows[:, None], cols[None, :]] & ~taken
        taken |= up
        out.append(up)
    return out


@dataclass
class StepTimes:
    """Seconds spent per step of the stage, summed over the images of a run."""

    features: float = 0.0
    cut: float = 0.0
    crf: float = 0.0
    encode: float = 0.0
    images: int = 0

    def as_dict(self) -> dict:
        return {"features": self.features, "cut": self.cut, "crf": self.crf, "encode": self.encode}


def proposals_from_patches(
    resized: np.ndarray,
    patch_masks: Sequence[np.ndarray],
    original_size: tuple[int, int],
    config: MaskCutConfig,
    crf_params: CRFParams | None = None,
    times: StepTimes | None = None,
) -> list[Proposal]:
    """Steps 8-10 for one image: upsample, disjoint, refine (CRF or not), resize to (H, W), encode."""
    t0 = time.perf_counter()
    refined = [
        refine(resized, m, config.crf, crf_params) for m in full_resolution(patch_masks, resized.shape[:2]) if m.any()
    ]
    t1 = time.perf_counter()
    out = []
    for m in refined:
        if m is None:
            continue
        p = encode(resize_mask(m, *original_size), config.name)
        if p is not None:
            out.append(p)
    if times is not None:
        times.crf += t1 - t0
        times.encode += time.perf_counter() - t1
    return out


SOLVERS: dict[str, ncut.Solver] = {"exact": ncut.ncut_exact, "fast": ncut.ncut_fast}


def discover(
    images: Sequence[Image.Image | np.ndarray],
    config: MaskCutConfig,
    extractor: Extractor,
    *,
    solver: str = "fast",
    crf_params: CRFParams | None = None,
    times: StepTimes | None = None,
    executor: Executor | None = None,
) -> list[list[Proposal]]:
    """One configuration on a batch of images, steps 1-10: proposals per image at its original size.

    ``solver`` is "fast" (batched torch, on the features' device) or "exact" (float64 scipy, as published).
    ``executor`` (e.g. a process pool) runs steps 8-10 (upsampling, CRF, encoding) per image, so the CPU-bound
    CRF does not hold up the next backbone batch; the results are the same (``times`` then misses those steps).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if config.input_size % extractor.patch_size:
        raise ValueError(
            f"config {config.name!r}: input_size {config.input_size} is not a multiple of the patch size "
            f"{extractor.patch_size}"
        )
    sizes = [(im.height, im.width) if isinstance(im, Image.Image) else im.shape[:2] for im in images]
    t0 = time.perf_counter()
    batch, resized = preprocess(images, config.input_size)
    features = extractor(batch)
    if features.is_cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    grid = (features.shape[1], features.shape[2])
    patch_masks = maskcut_patches(features, grid, config.tau, config.n, SOLVERS[solver])
    if times is not None:
        times.features += t1 - t0
        times.cut += time.perf_counter() - t1
        times.images += len(images)
    if executor is not None:
        n = len(images)
        return list(executor.map(proposals_from_patches, resized, patch_masks, sizes, [config] * n, [crf_params] * n))
    return [
        proposals_from_patches(r, m, s, config, crf_params, times)
        for r, m, s in zip(resized, patch_masks, sizes, strict=True)
    ]
