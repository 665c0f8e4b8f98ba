"""A ready training DataLoader from a ``labels`` split: train transforms, targets of a scheme, seeded epochs.

:func:`build_loader` wraps :class:`multilabel_imagenet.dataset.TrainingDataset` (the dense target of a scheme,
or the crop-aware one with the ``proposals`` config) in a :class:`TrainLoader`, whose :meth:`TrainLoader.set_epoch`
fixes the epoch's shuffle and every worker's seed from ``(seed, epoch, rank)`` alone, so an epoch draws the same
images and augmentations whether or not the run was resumed before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from multilabel_imagenet import targets
from multilabel_imagenet.dataset.crops import RandomResizedCropWithBox
from multilabel_imagenet.dataset.training import TrainingDataset, collate
from multilabel_imagenet.training.recipe import Recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(recipe: Recipe | None = None, *, crop_aware: bool = False) -> Callable[[Image.Image], torch.Tensor]:
    """The recipe's train transform of a PIL image. ``torchvision``: RandomResizedCrop(img_size, scale, ratio),
    horizontal flip, RandAugment (2 ops, magnitude 9), ToTensor, ImageNet normalisation (the authors' code);
    ``timm``: ``timm.data.transforms_imagenet_train`` with ``auto_augment``. With ``crop_aware``, the crop is left
    out: :class:`RandomResizedCropWithBox` crops first, so that the target can follow the crop."""
    recipe = recipe or Recipe()
    if recipe.transforms == "timm":
        from timm.data.transforms_factory import transforms_imagenet_train
        from torchvision import transforms as tv1

        primary, secondary, final = transforms_imagenet_train(
            recipe.img_size,
            scale=recipe.scale,
            ratio=recipe.ratio,
            hflip=recipe.hflip,
            auto_augment=recipe.auto_augment if recipe.randaugment else None,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            separate=True,
        )
        if crop_aware:
            primary = tv1.Compose([tv1.RandomHorizontalFlip(recipe.hflip)] if recipe.hflip > 0 else [])
        return tv1.Compose([primary, secondary, final])
    from torchvision.transforms import v2

    ops: list[Any] = []
    if not crop_aware:
        ops.append(v2.RandomResizedCrop(recipe.img_size, scale=recipe.scale, ratio=recipe.ratio, antialias=True))
    if recipe.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(recipe.hflip))
    if recipe.randaugment:
        ops.append(v2.RandAugment())
    ops += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(ops)


def crop_for(recipe: Recipe) -> RandomResizedCropWithBox:
    """The crop of crop-aware targets, with the recipe's size, scale and ratio (bilinear, as torchvision's)."""
    return RandomResizedCropWithBox(recipe.img_size, scale=recipe.scale, ratio=recipe.ratio)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed that depends on (seed, epoch, rank) alone: the DataLoader's generator, hence its workers'."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class TrainLoader(DataLoader):
    """A DataLoader over a :class:`DistributedSampler` (one replica outside ``torchrun``) with a generator that
    :meth:`set_epoch` reseeds; call it before each epoch. Workers are not persistent, so each epoch's workers get
    seeds drawn from that generator (torch seeds ``torch``, ``random`` and numpy in each worker from them)."""

    def __init__(self, dataset, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, **kwargs):
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        super().__init__(dataset, batch_size, sampler=sampler, drop_last=True, generator=torch.Generator(), **kwargs)
        self.seed, self.rank = seed, rank
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(epoch_seed(self.seed, epoch, self.rank))


def build_loader(
    labels: datasets.Dataset,
    scheme: str = targets.DEFAULT_SCHEME,
    recipe: Recipe | None = None,
    *,
    batch_size: int | None = None,
    proposals: datasets.Dataset | None = None,
    crop_aware: bool = False,
    profile: str | None = None,
    ambiguity: targets.Ambiguity | None = None,
    num_workers: int = 8,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    target_dtype: torch.dtype = torch.float32,
) -> TrainLoader:
    """A :class:`TrainLoader` of ``{"image": [B, 3, S, S], "target": [B, 1000], "label", "image_id", ...}`` batches.

    ``labels`` is a ``labels`` split loaded with ``imagenet_root`` (``multilabel_imagenet.load(...,
    imagenet_root=ROOT)``); ``scheme`` names the target (``one_hot`` for the single-label baseline) and
    ``profile`` whose reading of it applies; ``crop_aware`` (with ``proposals``, the ``proposals`` split) makes the
    target follow the random crop. Transforms are :func:`train_transform` of ``recipe``. ``batch_size`` is per
    process (default: ``recipe.batch_size // world_size``); incomplete last batches are dropped. Raises
    ``ValueError`` naming what is missing."""
    recipe = recipe or Recipe()
    if "image" not in labels.column_names:
        raise ValueError(
            "the labels split has no image column: load it with imagenet_root=<folder holding train/ and val/>"
        )
    if crop_aware and proposals is None:
        raise ValueError("crop-aware targets need the proposals split (load(..., 'proposals', split))")
    if batch_size is None:
        if recipe.batch_size % world_size:
            raise ValueError(f"global batch size {recipe.batch_size} is not divisible by {world_size} processes")
        batch_size = recipe.batch_size // world_size
    per_rank = len(labels) // world_size
    if per_rank < batch_size:
        raise ValueError(
            f"the split has {len(labels):,} images, {per_rank:,} per process: fewer than one batch of {batch_size}"
        )
    dataset = TrainingDataset(
        labels,
        scheme,
        train_transform(recipe, crop_aware=crop_aware),
        proposals=proposals if crop_aware else None,
        crop=crop_for(recipe) if crop_aware else None,
        target_dtype=target_dtype,
        ambiguity=ambiguity,
        profile=profile,
    )
    return TrainLoader(
        dataset,
        batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
    )
