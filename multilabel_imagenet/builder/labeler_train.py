"""Training the labeler's head (paper Supp. B.1): the schedule, the loop, and training from cached features.

One loop (:func:`fit`) serves both ways to train:

- ``training: online`` (the paper, :mod:`.labeler_online`): every step decodes the images, augments image and
  mask together and runs the frozen backbone;
- ``training: cached`` (our fast option, :func:`train_from_cache`): the backbone runs once per image, on the
  image resized to the input size; each sample is pooled ``cache_views`` times with independent patch-dropout
  draws and every epoch picks one view per sample at random. It keeps patch dropout but gives up image
  augmentation (no crops, flips or RandAugment) and cannot pool logits (``pooling: logits``).

Every epoch's randomness is seeded by its number, so a run resumed from its checkpoint gives the same head.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from multilabel_imagenet import classes
from multilabel_imagenet.builder.labeler import (
    LabelerConfig,
    LabelerHead,
    drop_patches,
    load_checkpoint,
    masked_mean,
    masks_to_grid,
    pooled_logits,
    save_checkpoint,
)
from multilabel_imagenet.progress import bar as progress_bar

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
"""One training step's input: pooled features [B, d] and None, or patch tokens [B, N, d] and the patches
[B, N] (bool) each sample pools; then labels [B]."""


@dataclass
class FeatureCache:
    """Pooled training features: ``features`` [N, V, d] (V patch-dropout views), ``labels`` [N]."""

    features: torch.Tensor
    labels: torch.Tensor

    def save(self, path: str | Path) -> None:
        save_file({"features": self.features.contiguous(), "labels": self.labels.contiguous()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> FeatureCache:
        tensors = load_file(str(path))
        return cls(tensors["features"], tensors["labels"])


def build_feature_cache(
    items: Iterable[tuple[torch.Tensor, torch.Tensor, Sequence[tuple[Sequence[int], int]]]],
    config: LabelerConfig,
    dtype: torch.dtype = torch.float16,
) -> FeatureCache:
    """Pool training samples once. ``items`` yields per image ``(patch tokens [h, w, d], masks [M, H, W],
    samples)``, each sample being ``(mask indices, class)`` (several indices = their union; none = full image)."""
    generator = torch.Generator().manual_seed(config.seed)
    pooled, labels = [], []
    for features, masks, samples in items:
        if not samples:
            continue
        grid = (
            masks_to_grid(masks, features.shape[:2], config.mask_threshold, config.patch_rule) if len(masks) else None
        )
        for indices, label in samples:
            union = (
                grid[list(indices)].any(0, keepdim=True)
                if indices
                else torch.ones(1, *features.shape[:2], dtype=torch.bool)
            )
            views = union.expand(config.cache_views, -1, -1)
            dropped = drop_patches(views, config.patch_drop, generator, config.drop_rule)
            pooled.append(masked_mean(features.float(), dropped).to(dtype))
            labels.append(classes.check_index(label))
    if not pooled:
        raise ValueError("no training samples: the selection kept no proposal (check tau_sel and the label maps)")
    return FeatureCache(torch.stack(pooled), torch.tensor(labels, dtype=torch.long))


# ---------------------------------------------------------------- training loop


def learning_rate(config: LabelerConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 0 at the end of ``epochs`` (per step)."""
    warmup = config.warmup_epochs * steps_per_epoch
    total = config.epochs * steps_per_epoch
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(head: nn.Module, config: LabelerConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        head.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
    )


def _restore_optimizer(optimizer: torch.optim.Optimizer, head: nn.Module, optim: dict[str, torch.Tensor]) -> None:
    for i, p in enumerate(head.parameters()):
        buf = optim.get(f"optim.momentum.{i}")
        if buf is not None:
            optimizer.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype)


def fit(
    head: LabelerHead,
    config: LabelerConfig,
    epoch_batches: Callable[[int], Iterator[Batch]],
    steps_per_epoch: int,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    log: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_seconds: float = 60.0,
) -> LabelerHead:
    """The training loop shared by cached and online training: ``epoch_batches(epoch)`` yields the epoch's
    :data:`Batch` es (tokens are pooled by ``config.pooling``). Saves ``checkpoint`` at the end of an epoch once
    ``checkpoint_seconds`` have passed since the last save, and after the last epoch; ``resume`` continues from
    it (weights, momentum, epoch) and gives the same head as an uninterrupted run, since every epoch's
    randomness is seeded by its number. Appends one JSON line per epoch (loss, accuracy, lr) to ``log``."""
    head.to(device)
    optimizer = make_optimizer(head, config)
    start = 0
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        saved, saved_config, start, optim = load_checkpoint(checkpoint)
        if asdict(saved_config) != asdict(config):
            raise ValueError(f"{checkpoint}: saved with a different configuration; not resuming")
        head.load_state_dict(saved.state_dict())
        _restore_optimizer(optimizer, head, optim)
    lr = learning_rate(config, start * steps_per_epoch, steps_per_epoch)
    saved_at = time.monotonic()
    bar = progress_bar(total=config.epochs, initial=start, unit="epoch", desc="train labeler", progress=progress)
    for epoch in range(start, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout draws: the same epoch gives the same steps
        head.train()
        seen = correct = 0
        loss_sum = 0.0
        for step, (x, patches, y) in enumerate(epoch_batches(epoch)):
            lr = learning_rate(config, epoch * steps_per_epoch + step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, torch.float32), y.to(device)
            logits = head(x) if patches is None else pooled_logits(head, x, patches.to(device), config.pooling)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        stats = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "lr": lr}
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['accuracy']:.3f}")
        bar.update(1)
        if log is not None:
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(stats) + "\n")
        last = epoch + 1 == config.epochs
        if checkpoint is not None and (last or time.monotonic() - saved_at >= checkpoint_seconds):
            save_checkpoint(checkpoint, head, config, optimizer, epoch + 1)
            saved_at = time.monotonic()
    bar.close()
    return head.eval()


def train_from_cache(
    cache: FeatureCache, config: LabelerConfig, num_classes: int = classes.NUM_CLASSES, **fit_kwargs
) -> LabelerHead:
    """Train a head on cached pooled features (see :func:`fit` for checkpoint, resume, log, device)."""
    n, views = cache.features.shape[:2]
    steps = math.ceil(n / config.batch_size)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
        view = torch.randint(views, (n,), generator=g)
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            yield cache.features[idx, view[idx]], None, cache.labels[idx]

    torch.manual_seed(config.seed)
    head = LabelerHead(cache.features.shape[-1], config.hidden, num_classes, config.dropout)
    return fit(head, config, epoch_batches, steps, **fit_kwargs)


# ---------------------------------------------------------------- online training with joint augmentation
