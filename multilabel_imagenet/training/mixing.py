"""MixUp / CutMix over dense [B, C] soft targets, and a guard on timm's ``Mixup`` for such targets.

:class:`SoftMixUpCutMix` runs torchvision's ``transforms.v2.MixUp`` / ``CutMix``, which accept probability
targets of shape [B, C] and mix them with the batch's lambda (CutMix with the lambda corrected to the pasted box's
area): the paper's choice for its ViT runs (Supp. C.1, "replacing mixup and cutmix from timm (which assumes
single-label) with torchvision versions"). It only adds what timm's ``Mixup`` offers on top (apply with
probability ``prob``, switch between the two with ``switch_prob``) and checks the targets, so nothing of the
mixing itself is reimplemented.

timm's ``Mixup`` and ``FastCollateMixup`` one-hot encode their targets unless built with ``multi_label=True``
(timm 1.0.31): a [B, 1000] target comes back as [B*1000, 1000] without an error.
:func:`install_timm_mixup_guard` (run when :mod:`multilabel_imagenet.training` is imported) makes them raise
:class:`DenseTargetError` instead; index targets and ``multi_label=True`` pass through unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2


class DenseTargetError(ValueError):
    """Dense [B, C] targets handed to a mixing transform that would one-hot encode them."""


def check_soft_targets(target: torch.Tensor, batch_size: int, where: str) -> None:
    """Raise ``ValueError`` unless ``target`` is a floating [batch_size, C] tensor with values in [0, 1]."""
    if not isinstance(target, torch.Tensor) or target.ndim != 2 or not target.is_floating_point():
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"{where}: targets must be a floating [B, C] tensor of soft labels, got {shape}")
    if target.shape[0] != batch_size:
        raise ValueError(f"{where}: {target.shape[0]} targets for a batch of {batch_size} images")
    if target.numel() and (target.min() < 0 or target.max() > 1):
        raise ValueError(
            f"{where}: soft targets must lie in [0, 1], got [{target.min().item():g}, {target.max().item():g}]"
        )


class SoftMixUpCutMix:
    """MixUp or CutMix on a batch ``(images [B, 3, H, W], targets [B, C] in [0, 1])``, torchvision's transforms.

    With probability ``prob`` the batch is mixed: by CutMix with probability ``switch_prob`` when both are enabled
    (alpha > 0), else by MixUp (timm's ``Mixup`` defaults: ``prob`` 1.0, ``switch_prob`` 0.5). Image i is mixed
    with image i - 1 (torchvision's pairing), and targets with the same lambda: ``lam * y + (1 - lam) * y_rolled``
    (for CutMix, lam = 1 - box area / image area), so they stay in [0, 1]. The DeiT-III recipe the paper uses for
    ViTs has ``mixup_alpha=0.8, cutmix_alpha=1.0``; its ResNet recipe (Supp. B.3) has neither. Randomness comes
    from torch's global generator."""

    def __init__(
        self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5
    ) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"alphas must be >= 0, got mixup {mixup_alpha}, cutmix {cutmix_alpha}")
        if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"prob and switch_prob must lie in [0, 1], got {prob}, {switch_prob}")
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.mixup = v2.MixUp(alpha=mixup_alpha) if mixup_alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cutmix_alpha) if cutmix_alpha > 0 else None
        self.enabled = True  # a training loop may switch mixing off (timm's mixup_off_epoch)

    @property
    def active(self) -> bool:
        return self.enabled and self.prob > 0 and (self.mixup is not None or self.cutmix is not None)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_soft_targets(targets, images.shape[0], type(self).__name__)
        if not self.active or torch.rand(()).item() >= self.prob:
            return images, targets
        if self.mixup is not None and self.cutmix is not None:
            transform = self.cutmix if torch.rand(()).item() < self.switch_prob else self.mixup
        else:
            transform = self.mixup or self.cutmix
        mixed, mixed_targets = transform(images, targets.float())
        return torch.Tensor.as_subclass(mixed, torch.Tensor), mixed_targets.to(targets.dtype)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mixup_alpha={self.mixup_alpha}, cutmix_alpha={self.cutmix_alpha}, "
            f"prob={self.prob}, switch_prob={self.switch_prob})"
        )


_MESSAGE = (
    "{cls} got dense targets of shape {shape}: unless built with multi_label=True it one-hot encodes class "
    "indices, so [B, C] soft labels would silently come back as [B*C, C]. For multi-label targets use "
    "multilabel_imagenet.training.SoftMixUpCutMix (torchvision's MixUp/CutMix, as the paper did), or timm's "
    "{cls}(..., multi_label=True, label_smoothing=0.0) and the smoothing range of MultiLabelBCE"
)


def _dense(target: Any) -> tuple[int, ...] | None:
    """The shape of ``target`` if it holds more than one number per image (a batch [B, C] or an item [C])."""
    shape = tuple(getattr(target, "shape", ()))
    return shape if len(shape) >= 1 and shape[-1] > 1 else None


def _guarded_call(original):
    def __call__(self, x, target):  # Mixup(x, target)
        shape = tuple(getattr(target, "shape", ()))
        if not getattr(self, "multi_label", False) and len(shape) >= 2 and shape[-1] > 1:
            raise DenseTargetError(_MESSAGE.format(cls=type(self).__name__, shape=shape))
        return original(self, x, target)

    __call__._multilabel_imagenet_guard = True  # type: ignore[attr-defined]
    return __call__


def _guarded_collate(original):
    def __call__(self, batch, _=None):  # FastCollateMixup(batch): a list of (image, target) items
        shape = _dense(batch[0][1]) if batch and len(batch[0]) > 1 else None
        if not getattr(self, "multi_label", False) and shape is not None:
            raise DenseTargetError(_MESSAGE.format(cls=type(self).__name__, shape=(len(batch), *shape)))
        return original(self, batch, _)

    __call__._multilabel_imagenet_guard = True  # type: ignore[attr-defined]
    return __call__


def install_timm_mixup_guard() -> bool:
    """Make timm's ``Mixup`` and ``FastCollateMixup`` raise :class:`DenseTargetError` on dense targets (when not
    built with ``multi_label=True``). Idempotent; returns False when timm is not installed. Correct uses (class
    index targets, or ``multi_label=True``) behave exactly as before."""
    try:
        from timm.data import mixup
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    if not getattr(mixup.Mixup.__call__, "_multilabel_imagenet_guard", False):
        mixup.Mixup.__call__ = _guarded_call(mixup.Mixup.__call__)
    if not getattr(mixup.FastCollateMixup.__call__, "_multilabel_imagenet_guard", False):
        mixup.FastCollateMixup.__call__ = _guarded_collate(mixup.FastCollateMixup.__call__)
    return True
