"""ReLabel label maps (Yun et al. 2021): reading them, scoring proposals on them, selecting labeler samples.

A map is one tensor per train image at ``<maps_root>/<wnid>/<image_id>.pt`` of shape [2, 5, 15, 15]: [0] the
top-5 logits of each of the 15 x 15 cells, [1] their class indices stored as floats (REFERENCE.md section 2).
Dimension 2 is the image's rows (y) and dimension 3 its columns (x).

A proposal is scored by scattering the logits into a 1000 x 15 x 15 map (other classes stay at logit 0),
averaging it over the mask's pixels after bilinear upsampling to the image size (``resample="nearest"``: over
the cells weighted by how much of the mask they hold, i.e. the mask downsampled to 15 x 15), and a softmax.
The average is exact without materialising the upsampled map: upsampling is linear, so the mean over a mask
is a weighted sum of cells with weights ``R_y^T M R_x / |M|`` for the 1-D interpolation matrices ``R_y`` and
``R_x``. So a mask smaller than a cell never "vanishes" at 15 x 15.

``resample="cv2_linear"`` reproduces the authors' code (``code/labeler/mask_level_relabel.py``): the map is
not upsampled; the mask is resized to 15 x 15 as ``cv2.resize(mask, (15, 15), interpolation=INTER_LINEAR)``
does (bilinear point sampling at half-pixel centres, no antialiasing: each cell reads at most 2 x 2 pixels)
and the cells are weighted by the resized mask. A small mask can fall between the sample points and vanish;
the authors' division by its zero sum gives NaN. Here such a mask scores 0 on every class (never selected)
and :func:`iter_selections` records it.

Selection (paper Supp. B.1): a proposal becomes a labeler training sample for the image's label when its
ReLabel probability on that label exceeds tau_sel = 0.75. The authors' code differs (REFERENCE.md section 2);
``mode="authors"`` reproduces it: ReLabel top-1 class with probability >= tau_sel, same-class confident masks
of one image united into one sample, and optionally a full-image sample with the image label when no sample
carries it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from multilabel_imagenet import classes

GRID = 15
TOPK = 5
TAU_SELECT = 0.75
"""tau_sel of the paper, Supp. B.1."""
RESAMPLE_MODES = ("bilinear", "nearest", "cv2_linear")
SELECT_MODES = ("paper", "authors")


class RelabelMapError(ValueError):
    """A ReLabel map is missing or malformed; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def map_path(maps_root: str | Path, image_path: str) -> Path:
    """Where the map of a train image lives: ``n01440764/n01440764_10026.JPEG`` -> ``<root>/n01440764/
    n01440764_10026.pt``."""
    return Path(maps_root) / Path(image_path).with_suffix(".pt")


MAP_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Dtypes a map may be stored in (ReLabel's are float32; float16 halves the files)."""


def read_map(path: str | Path) -> np.ndarray:
    """Load and validate a map as float32 [2, 5, 15, 15]; raises :class:`RelabelMapError`. Never unpickles
    arbitrary objects (``weights_only=True``).

    A map must be one dense tensor of a dtype in :data:`MAP_DTYPES` (an ``nn.Parameter`` or a tensor saved with
    ``requires_grad=True`` is read for its values), finite, with logits within the float32 range and class
    indices that are integers in 0..999."""
    path = Path(path)
    if not path.is_file():
        raise RelabelMapError(path, "ReLabel map not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        raise RelabelMapError(path, f"cannot load as a tensor file: {type(err).__name__}: {err}") from None
    if not isinstance(data, torch.Tensor):
        raise RelabelMapError(path, f"expected a tensor, found {type(data).__name__}")
    if data.layout != torch.strided:
        raise RelabelMapError(path, f"expected a dense tensor, found a {str(data.layout).removeprefix('torch.')} one")
    if data.is_meta:
        raise RelabelMapError(path, "the tensor holds no values (saved from the meta device)")
    if data.dtype not in MAP_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in MAP_DTYPES)
        raise RelabelMapError(path, f"expected a tensor of {names}, found {str(data.dtype).removeprefix('torch.')}")
    if tuple(data.shape) != (2, TOPK, GRID, GRID):
        raise RelabelMapError(path, f"expected shape [2, {TOPK}, {GRID}, {GRID}], found {list(data.shape)}")
    try:  # any tensor torch.load can return: a failure here is the file's, recorded like the others
        stored = data.detach().numpy() if data.dtype != torch.bfloat16 else data.detach().float().numpy()
    except Exception as err:
        raise RelabelMapError(path, f"cannot read the tensor's values: {type(err).__name__}: {err}") from None
    if not np.isfinite(stored).all():
        raise RelabelMapError(path, "holds NaN or infinite values")
    with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused next
        label_map = stored.astype(np.float32)
    if not np.isfinite(label_map).all():
        raise RelabelMapError(path, f"holds values beyond the float32 range (largest {np.abs(stored).max():.3g})")
    indices = label_map[1]
    bad = np.argwhere((indices != np.round(indices)) | (indices < 0) | (indices >= classes.NUM_CLASSES))
    if len(bad):
        k, y, x = (int(v) for v in bad[0])
        raise RelabelMapError(
            path,
            f"class indices must be integers in 0..{classes.NUM_CLASSES - 1}; {len(bad)} are not, e.g. "
            f"{indices[k, y, x]:g} at [1, {k}, {y}, {x}]",
        )
    return label_map


def dense_logits(label_map: np.ndarray) -> np.ndarray:
    """[1000, 15, 15] logits: the map's top-5 per cell scattered in, 0 for every other class."""
    logits = np.zeros((classes.NUM_CLASSES, GRID, GRID), dtype=np.float32)
    rows, cols = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    for k in range(TOPK):
        logits[label_map[1, k].astype(np.int64), rows, cols] = label_map[0, k]
    return logits


def _interpolation_matrix(size: int, mode: str) -> torch.Tensor:
    """[size, 15]: row p holds the weights of the 15 cells at output position p (align_corners=False)."""
    eye = torch.eye(GRID, dtype=torch.float64)[None]  # [1, 15 cells, 15 positions]
    if mode == "bilinear":
        weights = F.interpolate(eye, size=size, mode="linear", align_corners=False)
    else:  # nearest: each pixel belongs to one cell, i.e. the mask downsampled to 15 x 15 by area
        weights = F.interpolate(eye, size=size, mode="nearest-exact")
    return weights[0].T


def linear_resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in] weights of ``cv2.resize(..., INTER_LINEAR)`` along one axis: output position d reads
    source coordinate (d + 0.5) * size_in / size_out - 0.5 between its two neighbouring pixels; a coordinate
    before the first pixel reads the first, one at or past the last pixel reads the last."""
    src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    left = np.floor(src).astype(np.int64)
    frac = src - left
    frac[left < 0], left[left < 0] = 0.0, 0
    last = left >= size_in - 1
    frac[last], left[last] = 0.0, size_in - 1
    weights = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(weights, (rows, left), 1.0 - frac)
    np.add.at(weights, (rows, np.minimum(left + 1, size_in - 1)), frac)
    return weights


def mask_cell_weights(masks: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """[M, 15, 15] weights that average the map over each of the [M, H, W] masks (each sums to 1); with
    ``cv2_linear`` a mask that vanishes at 15 x 15 has all-zero weights."""
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"resample mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got shape {list(masks.shape)}")
    areas = masks.reshape(len(masks), -1).sum(1)
    if (areas == 0).any():
        raise ValueError(f"masks {np.flatnonzero(areas == 0).tolist()} are empty and cannot be scored")
    m = torch.from_numpy(masks).to(torch.float64)
    if mode == "cv2_linear":
        ry, rx = (torch.from_numpy(linear_resize_matrix(n, GRID)) for n in masks.shape[1:])
        resized = torch.einsum("rh,mhw,cw->mrc", ry, m, rx)
        total = resized.sum((1, 2), keepdim=True)
        return torch.where(total > 0, resized / total.clamp(min=1e-300), 0.0).float().numpy()
    ry = _interpolation_matrix(masks.shape[1], mode)
    rx = _interpolation_matrix(masks.shape[2], mode)
    weights = torch.einsum("hr,mhw,wc->mrc", ry, m, rx) / torch.from_numpy(areas)[:, None, None]
    return weights.float().numpy()


def score_proposals(label_map: np.ndarray, masks: np.ndarray, mode: str = "bilinear") -> np.ndarray:
    """ReLabel probabilities [M, 1000] of each mask: softmax of the map's logits averaged over the mask; a mask
    that vanishes (``cv2_linear`` only, see :func:`vanished`) scores 0 on every class."""
    weights = mask_cell_weights(masks, mode).reshape(len(masks), GRID * GRID)
    logits = weights @ dense_logits(label_map).reshape(classes.NUM_CLASSES, GRID * GRID).T
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).float().numpy()
    probs[~weights.any(1)] = 0.0
    return probs


def vanished(probs: np.ndarray) -> list[int]:
    """The masks :func:`score_proposals` could not score (all-zero rows)."""
    return np.flatnonzero(~np.asarray(probs).any(1)).tolist()


@dataclass(frozen=True)
class Sample:
    """A labeler training sample: masks (indices into the image's proposals; empty = the full image) and class."""

    mask_indices: tuple[int, ...]
    class_index: int
    relabel_prob: float

    @property
    def full_image(self) -> bool:
        return not self.mask_indices


def select_samples(
    probs: np.ndarray,
    label: int,
    tau_sel: float = TAU_SELECT,
    mode: str = "paper",
    add_full_image: bool = False,
) -> list[Sample]:
    """Training samples of one image from its proposals' ReLabel probabilities [M, 1000].

    ``paper``: each mask whose probability on ``label`` exceeds ``tau_sel`` is a sample of ``label``.
    ``authors``: masks whose ReLabel top-1 probability is >= ``tau_sel`` are grouped by that class, each group
    one sample; ``add_full_image`` adds a full-image sample of ``label`` when no sample is of ``label``.
    """
    if mode not in SELECT_MODES:
        raise ValueError(f"selection mode must be one of {SELECT_MODES}, got {mode!r}")
    probs = np.asarray(probs, dtype=np.float32).reshape(-1, classes.NUM_CLASSES)
    label = classes.check_index(label)
    if mode == "paper":
        samples = [Sample((i,), label, float(p[label])) for i, p in enumerate(probs) if p[label] > tau_sel]
    else:
        top1 = probs.argmax(1)
        samples = []
        for c in dict.fromkeys(int(c) for i, c in enumerate(top1) if probs[i, c] >= tau_sel):
            members = tuple(int(i) for i in np.flatnonzero((top1 == c) & (probs[:, c] >= tau_sel)))
            samples.append(Sample(members, c, float(probs[list(members), c].max())))
    if add_full_image and not any(s.class_index == label for s in samples):
        samples.append(Sample((), label, float("nan")))
    return samples


@dataclass(frozen=True)
class SelectionFailure:
    """An image whose proposals could not be scored: which and why (serialisable with ``vars``)."""

    image_id: str
    path: str
    reason: str


def iter_selections(
    items: Iterable[tuple[str, str, int, np.ndarray]],
    maps_root: str | Path,
    tau_sel: float = TAU_SELECT,
    mode: str = "paper",
    add_full_image: bool = False,
    resample: str = "bilinear",
) -> Iterator[tuple[str, list[Sample], SelectionFailure | None]]:
    """For ``(image_id, image_path, label, masks [M, H, W])`` items, yield ``(image_id, samples, failure)``.

    A missing or malformed map yields a failure and no samples; the run goes on. An image without proposals
    yields no samples (plus the full-image sample when ``add_full_image``). Masks that vanish at 15 x 15
    (``resample="cv2_linear"``) yield a failure naming them, beside the samples of the other masks."""
    for image_id, image_path, label, masks in items:
        try:
            label_map = read_map(map_path(maps_root, image_path))
        except RelabelMapError as err:
            yield image_id, [], SelectionFailure(image_id, image_path, err.reason)
            continue
        probs = score_proposals(label_map, masks, resample) if len(masks) else np.zeros((0, classes.NUM_CLASSES))
        lost = vanished(probs)
        failure = None
        if lost:
            reason = f"proposals {lost} vanish when resampled to {GRID} x {GRID} ({resample}) and are not scored"
            failure = SelectionFailure(image_id, image_path, reason)
        yield image_id, select_samples(probs, label, tau_sel, mode, add_full_image), failure
