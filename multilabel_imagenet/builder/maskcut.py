"""Iterative MaskCut (CutLER; paper Supp. A.1), step by step as in REFERENCE.md section 1 steps 3-10.

* :func:`maskcut_patches` runs steps 3-7 on given features (T x d on an h' x w' grid), no backbone needed.
* :func:`full_resolution` runs step 8 (nearest upsampling, disjointness), :mod:`crf` step 9 (on the CPU with
  pydensecrf, or batched on the device by :func:`crf_on_device`), and :mod:`proposals` step 10.
* :func:`submit` runs one configuration on a batch of resized images: the device steps at once, the CPU steps
  in an executor; :func:`discover` does the same from decoded images and waits; :class:`Ensemble` runs several
  configurations on one batch and merges their proposals.

One point the published code leaves to chance is fixed here: the sign of the eigenvector. LAPACK returns x or
-x arbitrarily, and the published corner rule is not sign-symmetric (when the largest-magnitude entry sits on
the side holding >= 3 corners, x selects the other side and -x selects the seed's side). We orient x so that
its largest-magnitude entry is positive before the rules of step 5 run; then the seed's side is the object
unless it holds three or four corners, which is the rule as the paper states it (Supp. A.1 (a), (b)).
Both solvers go through the same orientation, so they agree wherever their eigenvectors agree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from multilabel_imagenet.builder import backbones, crf, ncut
from multilabel_imagenet.builder.backbones import Extractor
from multilabel_imagenet.builder.configs import DEFAULT_DEDUP_IOU, CRFParams, MaskCutConfig
from multilabel_imagenet.builder.crf import FOUR_CONNECTED, mask_iou
from multilabel_imagenet.builder.proposals import Proposal, encode, merge, resize_mask

# REFERENCE.md section 1 step 7: from the 2nd iteration on, a mask is dropped when its IoU with the previous
# iteration's mask exceeds 0.5 or its area is at most 1% of the grid.
DROP_IOU = 0.5
DROP_AREA_FRACTION = 0.01


# The seed is numpy's exact argmax, as in CutLER's maskcut.py (MaskCutConfig.seed_tie_rtol = 0, the default).
# SEED_TIE_RTOL is the earlier tie-tolerant rule, kept as an option: entries of x within this fraction of max|x|
# of the maximum count as tied and the lowest patch index wins (numpy's rule for exact ties), so float noise
# (1e-16 in the exact solver, ~1e-6 in the fast one) does not pick among entries that are equal in exact
# arithmetic. It is also the margin within which the fast solver's x cannot tell entries apart
# (:func:`seed_decided`). docs/discover.md ("Ties") gives what each choice does to agreement.
SEED_TIE_RTOL = 1e-4


def near_max(v: np.ndarray, rtol: float) -> np.ndarray:
    """Indices (ascending) of the entries of v within ``rtol * max|v|`` of max(v)."""
    return np.flatnonzero(v >= v.max() - rtol * float(np.abs(v).max()))


def first_argmax(v: np.ndarray, rtol: float = 0.0) -> int:
    """The seed's index in v: ``np.argmax(v)`` when ``rtol`` is 0, else the first of :func:`near_max`."""
    return int(np.argmax(v)) if rtol == 0.0 else int(near_max(v, rtol)[0])


def orient(x: np.ndarray, rtol: float = 0.0) -> np.ndarray:
    """x with the sign fixed so that its largest-magnitude entry (:func:`first_argmax`) is positive (see the
    module docstring)."""
    return -x if x[first_argmax(np.abs(x), rtol)] < 0 else x


def _seed_component(x: np.ndarray, grid: tuple[int, int], tie_rtol: float, margin: float) -> tuple[np.ndarray, bool]:
    """:func:`seed_component`, and whether its outcome is the same for every choice of the seeds among the
    entries within ``margin`` of the maxima (always True when ``margin`` is 0)."""
    h, w = grid
    x = np.asarray(x, dtype=np.float64)
    big = near_max(np.abs(x), margin) if margin else None
    decided = big is None or bool((x[big] > 0).all() or (x[big] < 0).all())
    x = orient(x, tie_rtol)
    candidate = x > np.sum(x) / x.size
    seed = first_argmax(np.abs(x), tie_rtol)
    decided = decided and (big is None or bool(candidate[big].all() or not candidate[big].any()))
    grid_candidate = candidate.reshape(h, w)
    corners = int(grid_candidate[0, 0]) + int(grid_candidate[0, -1]) + int(grid_candidate[-1, 0])
    corners += int(grid_candidate[-1, -1])
    if corners >= 3 or not candidate[seed]:
        x, candidate = -x, ~candidate
    seed = first_argmax(x, tie_rtol)
    labels, _ = ndimage.label(candidate.reshape(h, w), structure=FOUR_CONNECTED)  # step 6: 4-connected
    decided = decided and (not margin or np.unique(labels.flat[near_max(x, margin)]).size == 1)
    seed_label = labels.flat[seed]
    if seed_label == 0:  # cannot happen for a finite x; never return the background as an object
        return np.zeros((h, w), dtype=bool), decided
    return labels == seed_label, decided


def seed_component(x: np.ndarray, grid: tuple[int, int], tie_rtol: float = 0.0) -> np.ndarray:
    """Steps 5-6: bipartition x at its mean, pick the object side and keep the seed's 4-connected component.

    The corner rule is evaluated on the bipartition before any reversal. Seeds are picked by
    :func:`first_argmax` with ``tie_rtol`` (0: numpy's exact argmax, as published). Returns bool (h', w').
    """
    return _seed_component(x, grid, tie_rtol, 0.0)[0]


def seed_decided(x: np.ndarray, grid: tuple[int, int], margin: float = SEED_TIE_RTOL) -> bool:
    """Whether x fixes :func:`seed_component`'s mask even if its entries are only known to within
    ``margin * max|x|``: the entries within that margin of max|x| share a sign and a side of the bipartition, and
    those within it of max(x) after the reversal lie in one 4-connected component. Where this is False, which of
    the near-tied patches seeds the object is decided by noise at that scale."""
    return _seed_component(x, grid, 0.0, margin)[1]


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
    tie_rtol: float = 0.0,
    undecided: ncut.Solver | None = None,
) -> list[list[np.ndarray]]:
    """Steps 3-7 for a batch: N patch masks per image (bool (h', w'); dropped iterations are empty).

    ``features`` is (B, T, d) or (B, h', w', d), row-major over the grid. Images advance through the N
    iterations together so that one solver call serves the whole batch per iteration. Patches taken by an
    earlier kept mask get zero features (they stay in the graph with affinity eps). A dropped mask paints
    nothing, so the next iteration sees the same graph and its eigenvector is reused.

    ``tie_rtol`` is the seed rule (:func:`seed_component`; ``MaskCutConfig.seed_tie_rtol``, 0 = numpy's exact
    argmax). ``undecided``, when given, solves again the graphs whose x from ``solver`` leaves the seed to noise
    (:func:`seed_decided`): :func:`submit` passes the exact solver there when ``solver`` is the fast one and the
    seed is the exact argmax, so that the fast path takes the exact solver's seed among near-tied patches.
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
            for i, x in zip(changed, _solve(feats[changed], grid, tau, eps, solver, undecided), strict=True):
                vectors[i] = x
        changed = []
        for i in range(b):
            x = vectors[i]
            mask = np.zeros((h, w), dtype=bool) if x is None else seed_component(x, grid, tie_rtol)
            if it >= 1 and (mask_iou(previous[i], mask) > DROP_IOU or mask.sum() <= DROP_AREA_FRACTION * t):
                mask = np.zeros((h, w), dtype=bool)
            if mask.any():
                feats[i, torch.from_numpy(mask.reshape(-1)).to(feats.device)] = 0.0
                changed.append(i)
            previous[i] = mask
            masks[i].append(mask)
    return masks


def _solve(
    feats: torch.Tensor,
    grid: tuple[int, int],
    tau: float,
    eps: float,
    solver: ncut.Solver,
    undecided: ncut.Solver | None,
) -> list[np.ndarray | None]:
    """x per graph from ``solver``; those whose seed it leaves undecided from ``undecided`` (if given)."""
    a = ncut.affinity(feats, tau, eps)
    solved = solver(a)
    if undecided is not None:
        for j, x in enumerate(solved):
            if x is not None and not seed_decided(x, grid):
                solved[j] = undecided(a[j : j + 1])[0]
    return solved


def disjoint(patch_masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Step 8's disjointness on the patch grid: each mask minus all earlier ones."""
    out: list[np.ndarray] = []
    if not patch_masks:
        return out
    grid = patch_masks[0].shape
    taken = np.zeros(grid, dtype=bool)
    for m in patch_masks:
        if m.shape != grid:
            raise ValueError(f"patch masks of one image differ in shape: {m.shape} and {grid}")
        own = m & ~taken
        taken |= own
        out.append(own)
    return out


def nearest_indices(grid: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The source row and column of every pixel when an (h', w') grid is upsampled to ``size`` = (H, W)
    (torch 'nearest': floor(dst * in / out))."""
    return (np.arange(size[0]) * grid[0]) // size[0], (np.arange(size[1]) * grid[1]) // size[1]


def full_resolution(patch_masks: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Step 8: nearest upsampling of each (h', w') mask to ``size`` = (H, W), minus all earlier masks.

    Nearest upsampling picks a patch per pixel, so it commutes with the set operations: the masks are made
    disjoint on the patch grid (:func:`disjoint`), then upsampled.
    """
    own = disjoint(patch_masks)
    if not own:
        return own
    rows, cols = nearest_indices(own[0].shape, size)
    return [m.take(rows, axis=0).take(cols, axis=1) for m in own]


# Images per torch-CRF call on CUDA: bounds the lattices' memory (a few hundred MB per 480-px image). On the
# CPU one image per call is faster (1.8 vs 2.7 s for 8 scenes at 384 px, timed ad hoc at
# commit 350c368: the working set stays in cache).
CRF_CHUNK = 8


@dataclass
class StepTimes:
    """Seconds spent per step of the stage, summed over the images of a run (thread-safe :meth:`add`).

    ``features``, ``cut`` and the torch CRF's ``crf`` run on the device in the calling thread; ``check``
    (step 8 and the hole filling and self-check of step 9, plus the CRF itself for the pydensecrf backend) and
    ``encode`` (step 10) run in the executor, overlapping the next batch's device steps.
    """

    features: float = 0.0
    cut: float = 0.0
    crf: float = 0.0
    check: float = 0.0
    encode: float = 0.0
    images: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, step: str, seconds: float) -> None:
        with self._lock:
            setattr(self, step, getattr(self, step) + seconds)

    def as_dict(self) -> dict:
        """Seconds per step (every field but the image count)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("images", "_lock")}


def crf_on_device(
    resized: torch.Tensor, patch_masks: Sequence[Sequence[np.ndarray]], params: CRFParams | None = None
) -> list[list[np.ndarray]]:
    """Steps 8-9's CRF for a batch on ``resized``'s device with :func:`crf.dense_crf_torch`.

    ``resized``: (B, S, S, 3) uint8; ``patch_masks``: per image its N patch masks. Makes the masks disjoint
    and upsamples the non-empty ones as :func:`full_resolution` does, then refines them; returns per
    image the refined masks (bool (S, S), on the CPU) in the order of :func:`full_resolution`'s non-empty ones.
    """
    b, size = resized.shape[0], tuple(resized.shape[1:3])
    own = [disjoint(m) for m in patch_masks]
    keep = [[m for m in masks if m.any()] for masks in own]
    out: list[list[np.ndarray]] = [[] for _ in range(b)]
    most = max(map(len, keep), default=0)
    if most == 0:
        return out
    grid = next(masks[0].shape for masks in keep if masks)  # an image may have no mask (a flat or tiny image)
    grids = np.zeros((b, most, *grid), dtype=bool)
    for i, masks in enumerate(keep):
        if masks:
            grids[i, : len(masks)] = masks
    rows, cols = (torch.from_numpy(x).to(resized.device) for x in nearest_indices(grids.shape[2:], size))
    chosen = torch.from_numpy(grids).to(resized.device)[:, :, rows][:, :, :, cols]  # [B, K, S, S]
    chunk = CRF_CHUNK if resized.is_cuda else 1
    for lo in range(0, b, chunk):
        k = max(len(keep[i]) for i in range(lo, min(lo + chunk, b)))
        if k == 0:
            continue
        refined = crf.dense_crf_torch(resized[lo : lo + chunk], chosen[lo : lo + chunk, :k], params).cpu().numpy()
        for i, masks in enumerate(refined, start=lo):
            out[i] = list(masks[: len(keep[i])])
    return out


def proposals_from_patches(
    resized: np.ndarray,
    patch_masks: Sequence[np.ndarray],
    original_size: tuple[int, int],
    config: MaskCutConfig,
    crf_params: CRFParams | None = None,
    times: StepTimes | None = None,
    refined: Sequence[np.ndarray] | None = None,
) -> list[Proposal]:
    """Steps 8-10 for one image on the CPU: upsample, disjoint, refine, resize to (H, W), encode.

    ``refined``: the CRF's output for the non-empty masks when it ran elsewhere (:func:`crf_on_device`); then
    only hole filling and the self-check run here. Otherwise step 9 runs here (pydensecrf, or no CRF).
    """
    t0 = time.perf_counter()
    raw = [m for m in full_resolution(patch_masks, resized.shape[:2]) if m.any()]
    if refined is None:
        kept = [crf.refine(resized, m, config.crf, crf_params) for m in raw]
    else:
        kept = [crf.self_check(r, m) for r, m in zip(refined, raw, strict=True)]
    t1 = time.perf_counter()
    out = []
    for m in kept:
        if m is None:
            continue
        p = encode(resize_mask(m, *original_size), config.name)
        if p is not None:
            out.append(p)
    if times is not None:
        times.add("check", t1 - t0)
        times.add("encode", time.perf_counter() - t1)
    return out


class InlineExecutor(Executor):
    """Runs each submitted call at once, in the caller's thread."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # delivered through the future, as a pool would
            future.set_exception(err)
        return future


SOLVERS: dict[str, ncut.Solver] = {"exact": ncut.ncut_exact, "fast": ncut.ncut_fast}


def _check_config(config: MaskCutConfig, extractor: Extractor, solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if config.input_size % extractor.patch_size:
        raise ValueError(
            f"config {config.name!r}: input_size {config.input_size} is not a multiple of the patch size "
            f"{extractor.patch_size}"
        )


def submit(
    resized: torch.Tensor,
    sizes: Sequence[tuple[int, int]],
    config: MaskCutConfig,
    extractor: Extractor,
    device: str | torch.device = "cpu",
    *,
    solver: str = "fast",
    crf_params: CRFParams | None = None,
    times: StepTimes | None = None,
    executor: Executor | None = None,
) -> list[Future]:
    """One configuration on a batch of resized images; a future of its proposals per image.

    ``resized``: (B, S, S, 3) uint8 (S = ``config.input_size``), ``sizes``: the original (H, W) per image.
    Steps 1-7 run on ``device`` now: normalisation, the backbone (in its ``precision``, float32 by default), the
    batched normalised cuts, and, for the "torch" CRF backend, the CRF of every mask of the batch. Hole filling,
    the self-check, resizing to the original size and RLE encoding (and the CRF of the "pydensecrf" backend) go to
    ``executor`` (threads or processes; inline when None), so they overlap the next batch's GPU work.
    """
    _check_config(config, extractor, solver)
    if resized.ndim != 4 or tuple(resized.shape[1:]) != (config.input_size, config.input_size, 3):
        raise ValueError(f"config {config.name!r}: resized images must be B x {config.input_size}^2 x 3")
    t0 = time.perf_counter()
    on_device = resized.to(device, non_blocking=True)
    features = extractor(backbones.normalise(on_device))
    if features.is_cuda:
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    grid = (features.shape[1], features.shape[2])
    # The fast solver's x is good to about SEED_TIE_RTOL: with the exact argmax, the graphs where that cannot
    # fix the seed are solved again exactly (docs/discover.md, "Ties").
    undecided = ncut.ncut_exact if solver == "fast" and config.seed_tie_rtol == 0.0 else None
    patch_masks = maskcut_patches(
        features, grid, config.tau, config.n, SOLVERS[solver], tie_rtol=config.seed_tie_rtol, undecided=undecided
    )
    t2 = time.perf_counter()
    refined: list = [None] * len(sizes)
    if config.crf and config.crf_backend == "torch":
        refined = crf_on_device(on_device, patch_masks, crf_params)
    if times is not None:
        times.add("features", t1 - t0)
        times.add("cut", t2 - t1)
        times.add("crf", time.perf_counter() - t2)
        times.add("images", len(sizes))
    executor = executor or InlineExecutor()
    images = resized.cpu().numpy()
    in_process = not isinstance(executor, ProcessPoolExecutor)  # times can only be summed in this process
    return [
        executor.submit(
            proposals_from_patches,
            images[i],
            patch_masks[i],
            sizes[i],
            config,
            crf_params,
            times if in_process else None,
            refined[i],
        )
        for i in range(len(sizes))
    ]


def discover(
    images: Sequence[Image.Image | np.ndarray],
    config: MaskCutConfig,
    extractor: Extractor,
    *,
    solver: str = "fast",
    crf_params: CRFParams | None = None,
    times: StepTimes | None = None,
    executor: Executor | None = None,
    device: str | torch.device | None = None,
) -> list[list[Proposal]]:
    """One configuration on a batch of images, steps 1-10: proposals per image at its original size.

    ``solver`` is "fast" (batched torch, on the features' device) or "exact" (float64 scipy, as published).
    ``device`` defaults to the extractor's. ``executor`` (threads or processes) runs the CPU steps per image
    (:func:`submit`); the results are the same (``times`` then misses the steps run in other processes).
    """
    sizes = [(im.height, im.width) if isinstance(im, Image.Image) else im.shape[:2] for im in images]
    resized = backbones.resized_batch(images, config.input_size)
    device = device if device is not None else getattr(extractor, "device", "cpu")
    futures = submit(
        resized, sizes, config, extractor, device, solver=solver, crf_params=crf_params, times=times, executor=executor
    )
    return [f.result() for f in futures]


class Ensemble:
    """Several configurations on the same decoded images, proposals merged per image: the discover stage's
    unit of work. ``extractors`` line up with ``configs``; "pydensecrf" CRF work goes to ``processes`` (it holds
    the GIL), the rest of the CPU steps to ``threads`` (inline when None)."""

    def __init__(
        self,
        configs: Sequence[MaskCutConfig],
        extractors: Sequence[Extractor],
        device: str | torch.device = "cpu",
        *,
        solver: str = "fast",
        crf_params: CRFParams | None = None,
        dedup_iou: float = DEFAULT_DEDUP_IOU,
        threads: Executor | None = None,
        processes: Executor | None = None,
        times: dict[str, StepTimes] | None = None,
    ):
        if len(configs) != len(extractors):
            raise ValueError(f"{len(configs)} configurations but {len(extractors)} extractors")
        for c, ex in zip(configs, extractors, strict=True):
            _check_config(c, ex, solver)
        self.configs, self.extractors, self.device = tuple(configs), tuple(extractors), device
        self.solver, self.crf_params, self.dedup_iou = solver, crf_params, dedup_iou
        self.threads, self.processes = threads, processes
        self.times = times

    @property
    def input_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({c.input_size for c in self.configs}))

    def _executor(self, config: MaskCutConfig) -> Executor | None:
        if config.crf and config.crf_backend == "pydensecrf" and self.processes is not None:
            return self.processes
        return self.threads

    def submit(self, resized: dict[int, torch.Tensor], sizes: Sequence[tuple[int, int]]) -> Callable[[], list]:
        """Run every configuration's device steps on one batch (``resized``: input size -> (B, S, S, 3) uint8);
        returns a function that waits for the CPU steps and gives the merged proposals per image."""
        per_config = [
            submit(
                resized[c.input_size],
                sizes,
                c,
                ex,
                self.device,
                solver=self.solver,
                crf_params=self.crf_params,
                times=None if self.times is None else self.times.setdefault(c.name, StepTimes()),
                executor=self._executor(c),
            )
            for c, ex in zip(self.configs, self.extractors, strict=True)
        ]

        def result() -> list[list[Proposal]]:
            found = [[f.result() for f in futures] for futures in per_config]
            return [merge([f[i] for f in found], self.dedup_iou) for i in range(len(sizes))]

        return result
