"""BCE over dense multi-label targets with the paper's label-smoothing range (Supp. B.3: "a relaxed (min, max)
range instead of strict binary targets", best at (0.0001, 0.95)).

Two readings of a (min, max) range, both offered (:data:`SMOOTHING_MODES`):

- ``clamp`` (default): y' = min(max(y, min), max). Negatives become ``min``, positives are capped at ``max`` and
  soft scores in between are kept. This is what the authors' ResNet training code does
  (``smooth_targets_cap(y, pos_val=max, neg_val=min)`` in ``code/resnet_exp/util.py`` of
  github.com/jchen175/MultiLabel-ImageNet, flags ``--label_smoothing_min/--label_smoothing_max``), i.e. the
  recipe behind Tables 1 and 6.
- ``affine``: y' = min + (max - min) * y, timm's convention. timm's ``BinaryCrossEntropy(smoothing=s)`` (the loss of
  "ResNet strikes back", the paper's [36]) one-hot encodes an index target with off = s / C and on = 1 - s + s / C,
  the affine map of a 0/1 target onto [off, on] (s = 0.1 and C = 1000 give (0.0001, 0.9001)); for a dense target it
  smooths nothing (``smooth_dense`` moves it towards 0.5 instead). Applied to soft targets, the affine map also
  rescales every soft score (0.72 -> 0.684 at (0.0001, 0.95)).

For one-hot and 0/1 targets the two agree. Either way the result lies in [min, max].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SMOOTHING_RANGE = (0.0001, 0.95)
"""The paper's best label-smoothing range (Supp. B.3)."""
SMOOTHING_MODES = ("clamp", "affine")


def check_smoothing(smoothing: tuple[float, float] | None, mode: str) -> None:
    if mode not in SMOOTHING_MODES:
        raise ValueError(f"smoothing mode must be one of {SMOOTHING_MODES}, got {mode!r}")
    if smoothing is not None:
        low, high = smoothing
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"smoothing range must satisfy 0 <= min < max <= 1, got ({low}, {high})")


def smooth_targets(
    target: torch.Tensor, smoothing: tuple[float, float] | None = SMOOTHING_RANGE, mode: str = "clamp"
) -> torch.Tensor:
    """``target`` (values in [0, 1]) mapped into ``smoothing`` = (min, max) by ``mode`` (module docstring); a new
    tensor. ``None`` returns ``target`` unchanged."""
    check_smoothing(smoothing, mode)
    if smoothing is None:
        return target
    low, high = smoothing
    if mode == "clamp":
        return target.clamp(low, high)
    return target * (high - low) + low


class MultiLabelBCE(nn.Module):
    """Mean binary cross-entropy of logits [B, C] against dense targets [B, C] in [0, 1], with the targets first
    mapped into ``smoothing`` (:func:`smooth_targets`).

    ``skip_empty`` (default, as the authors' training code): images whose target is all zero (a ``local_soft``
    image with no label) are left out of the loss instead of being pushed towards "nothing here"; the mean is over
    the remaining images. ``pos_weight`` (a number or a [C] tensor) weights the positive term as in
    ``torch.nn.BCEWithLogitsLoss`` (swept in Supp. B.3, not part of the best recipe). The loss is computed in
    float32 whatever the logits' dtype.
    """

    def __init__(
        self,
        smoothing: tuple[float, float] | None = SMOOTHING_RANGE,
        mode: str = "clamp",
        skip_empty: bool = True,
        pos_weight: float | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        check_smoothing(smoothing, mode)
        self.smoothing = None if smoothing is None else (float(smoothing[0]), float(smoothing[1]))
        self.mode, self.skip_empty = mode, skip_empty
        if pos_weight is not None and not isinstance(pos_weight, torch.Tensor):
            pos_weight = torch.tensor(float(pos_weight))
        self.register_buffer("pos_weight", pos_weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ in shape")
        logits, target = logits.float(), target.float()
        if self.skip_empty:
            keep = target.amax(dim=1) > 0
            logits, target = logits[keep], target[keep]
            if logits.shape[0] == 0:
                return logits.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
        target = smooth_targets(target, self.smoothing, self.mode)
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.pos_weight)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}, mode={self.mode!r}, skip_empty={self.skip_empty}"
