"""Training on the multi-label targets: the paper's recipe (Supp. B.3) and the pieces no library gives for dense
[B, 1000] targets. See docs/training.md.

- :class:`SoftMixUpCutMix` (:mod:`.mixing`): torchvision's MixUp/CutMix over soft targets; importing this
  package also makes timm's ``Mixup`` refuse dense targets (:func:`install_timm_mixup_guard`) instead of silently
  one-hot encoding them.
- :class:`MultiLabelBCE`, :func:`smooth_targets` (:mod:`.loss`): BCE with the (0.0001, 0.95) smoothing range.
- :class:`Recipe`, :func:`build_optimizer`, :func:`lr_scheduler`, :func:`param_groups` (:mod:`.recipe`): AdamW,
  lr 1e-3, wd 0.15 except the head, cosine with 5 warm-up epochs, batch 1024.
- :func:`build_loader` (:mod:`.data`): a seeded DataLoader of a ``labels`` split with train transforms.
- :func:`train`, :class:`TrainConfig` (:mod:`.loop`): the whole run, resumable from a safetensors checkpoint,
  with the benchmarks scored at the end (``multilabel-imagenet train``).
"""

from multilabel_imagenet.training.data import build_loader, train_transform
from multilabel_imagenet.training.loss import SMOOTHING_RANGE, MultiLabelBCE, smooth_targets
from multilabel_imagenet.training.mixing import DenseTargetError, SoftMixUpCutMix, install_timm_mixup_guard
from multilabel_imagenet.training.recipe import Recipe, build_optimizer, lr_scheduler, param_groups

install_timm_mixup_guard()

__all__ = [
    "SMOOTHING_RANGE",
    "DenseTargetError",
    "MultiLabelBCE",
    "Recipe",
    "SoftMixUpCutMix",
    "TrainConfig",
    "build_loader",
    "build_optimizer",
    "install_timm_mixup_guard",
    "lr_scheduler",
    "param_groups",
    "smooth_targets",
    "train",
    "train_transform",
]


def __getattr__(name: str):
    if name in ("train", "TrainConfig"):
        from multilabel_imagenet.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
