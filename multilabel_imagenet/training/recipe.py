"""The paper's training recipe (Supp. B.3) as overridable defaults, and its optimizer and learning-rate schedule.

Supp. B.3: "AdamW optimizer with a learning rate of 0.001 and weight decay of 0.15 (WD=0 for the classifier head), a
label smoothing range of (0.0001, 0.95), and a global batch size of 1024. Training uses cosine decay with 5-epoch
linear warmup, and standard augmentations of RandomResizedCrop, horizontal flip, and RandAugment." Table 6 trains a
ResNet-50 for 100 epochs; Table 1 (Supp. C.1) extends the same setup to 300 epochs.

Weight decay: the paper exempts only the classifier head, and so does the authors' code (``--nodecay``: every
parameter with ``fc`` in its name). timm's own recipes also exempt norms, biases and a model's
``no_weight_decay()`` parameters (``filter_bias_and_bn``); that is :attr:`Recipe.no_decay_norm_bias`, off by
default because the paper does not say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from multilabel_imagenet.training.loss import SMOOTHING_RANGE, check_smoothing

TRANSFORMS = ("torchvision", "timm")


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of a run; the defaults are the paper's (Supp. B.3), with ResNet-50's 100 epochs of Table 6.

    ``batch_size`` is global (split over processes under ``torchrun``); the learning rate is not rescaled when it
    changes. ``transforms``: ``torchvision`` (the authors' code: RandomResizedCrop(img_size), flip, RandAugment(2, 9),
    ImageNet normalisation) or ``timm`` (timm's ``transforms_imagenet_train`` with ``auto_augment``).
    ``mixup``/``cutmix`` are alphas (0 = off, as in the ResNet recipe; the DeiT-III recipe of the paper's ViTs uses
    0.8/1.0). ``head_bias_init`` sets the head's bias to logit(smoothing min), the "head initialization" of Supp.
    B.3 (swept there, not part of the best configuration)."""

    epochs: int = 100
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.15
    head_weight_decay: float = 0.0
    no_decay_norm_bias: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 5.0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    smoothing: tuple[float, float] | None = SMOOTHING_RANGE
    smoothing_mode: str = "clamp"
    skip_empty: bool = True
    pos_weight: float | None = None
    head_bias_init: bool = False
    img_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    transforms: str = "torchvision"
    randaugment: bool = True
    auto_augment: str = "rand-m9-mstd0.5-inc1"
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_off_epoch: int = 0
    clip_grad: float | None = None
    drop_path: float | None = None

    def __post_init__(self) -> None:
        check_smoothing(self.smoothing, self.smoothing_mode)
        if self.transforms not in TRANSFORMS:
            raise ValueError(f"transforms must be one of {TRANSFORMS}, got {self.transforms!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must lie in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.lr <= 0 or self.weight_decay < 0 or self.head_weight_decay < 0:
            raise ValueError("lr must be > 0 and weight decays >= 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe fields {unknown}; known: {sorted(known)}")
        tuples = {"betas", "smoothing", "scale", "ratio"}
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in data.items()})


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` (or ``torch.compile``) wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier head's parameters: timm's ``get_classifier()``, else a top-level ``fc``, ``head`` or
    ``classifier`` module (torchvision's names). Raises ``ValueError`` when none is found."""
    model = unwrap(model)
    candidates = []
    if hasattr(model, "get_classifier"):
        candidates.append(model.get_classifier())
    candidates += [getattr(model, name, None) for name in ("fc", "head", "classifier")]
    for head in candidates:
        if isinstance(head, nn.Module):
            params = [p for p in head.parameters() if p.requires_grad]
            if params:
                return params
    raise ValueError(
        f"cannot find the classifier head of {type(model).__name__} (no get_classifier(), fc, head or classifier "
        "with parameters); build the parameter groups yourself"
    )


def param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """AdamW parameter groups: the head with ``head_weight_decay`` (0: the paper), the rest with ``weight_decay``;
    with ``no_decay_norm_bias``, 1-d parameters (norms, biases) and the model's ``no_weight_decay()`` names get 0 as
    well (timm's rule). Empty groups are dropped; each group carries a ``name``."""
    model = unwrap(model)
    head = {id(p) for p in head_parameters(model)}
    skip = set(model.no_weight_decay()) if recipe.no_decay_norm_bias and hasattr(model, "no_weight_decay") else set()
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "head": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in head:
            groups["head"].append(param)
        elif recipe.no_decay_norm_bias and (param.ndim <= 1 or name.endswith(".bias") or name in skip):
            groups["no_decay"].append(param)
        else:
            groups["decay"].append(param)
    decay = {"decay": recipe.weight_decay, "no_decay": 0.0, "head": recipe.head_weight_decay}
    return [{"name": k, "params": v, "weight_decay": decay[k]} for k, v in groups.items() if v]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the recipe's lr, betas and eps."""
    return torch.optim.AdamW(param_groups(model, recipe), lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)


def init_head_bias(model: nn.Module, prior: float) -> None:
    """Set the head's bias to logit(``prior``), so that every sigmoid output starts at ``prior``."""
    biases = [p for p in head_parameters(model) if p.ndim == 1]
    if not biases:
        raise ValueError("the classifier head has no bias to initialise")
    with torch.no_grad():
        for bias in biases:
            bias.fill_(math.log(prior / (1.0 - prior)))


class WarmupCosine:
    """Learning rate per optimizer step: linear from ``warmup_lr`` to each group's ``lr`` over ``warmup_steps``,
    then cosine decay to ``min_lr`` at ``total_steps``. Stepped after every optimizer step (the authors' code steps
    per epoch; a per-step schedule is the same curve at a finer grain). Its state is one integer."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        warmup_lr: float = 0.0,
        min_lr: float = 0.0,
    ) -> None:
        if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}) and >= 1 step")
        self.optimizer, self.total_steps, self.warmup_steps = optimizer, total_steps, warmup_steps
        self.warmup_lr, self.min_lr = warmup_lr, min_lr
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.step_count = 0
        self._apply()

    def lr_at(self, base: float, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) for a group whose peak is ``base``; the first
        warm-up step already moves (it gets 1 / warmup_steps of the way), the last one reaches ``base``."""
        if step < self.warmup_steps:
            return self.warmup_lr + (base - self.warmup_lr) * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (base - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(group["initial_lr"], self.step_count)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict) -> None:
        if (state["total_steps"], state["warmup_steps"]) != (self.total_steps, self.warmup_steps):
            raise ValueError(
                f"the checkpoint's schedule has {state['total_steps']} steps ({state['warmup_steps']} warm-up), "
                f"this run {self.total_steps} ({self.warmup_steps}): same dataset, batch size and epochs needed"
            )
        self.step_count = int(state["step_count"])
        self._apply()


def lr_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> WarmupCosine:
    """:class:`WarmupCosine` over ``recipe.epochs`` epochs of ``steps_per_epoch`` steps."""
    return WarmupCosine(
        optimizer,
        recipe.epochs * steps_per_epoch,
        round(recipe.warmup_epochs * steps_per_epoch),
        recipe.warmup_lr,
        recipe.min_lr,
    )


def describe_groups(groups: Iterable[dict]) -> str:
    """One line per parameter group: name, tensors, parameters, weight decay."""
    return "; ".join(
        f"{g.get('name', '?')}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} params, "
        f"wd {g['weight_decay']:g}"
        for g in groups
    )
