"""The region labeler (paper Sec. 3.2-3.3, Supp. B.1): a frozen ViT, masked mean pooling, an MLP head.

A proposal mask is projected onto the backbone's patch grid; its pooled feature is the mean of the patch
tokens under it. Training drops 25% of the foreground patches before pooling (Supp. B.1; the authors' code
uses 20%). The head is Dropout-Linear-GELU twice, then Linear to 1000 classes (hidden 1024), trained with
cross-entropy by SGD with Nesterov momentum and a cosine schedule after a linear warm-up.

Two ways to train, sharing one loop:

- from cached pooled features (fast, the default): the frozen backbone runs once per image; each sample is
  pooled ``cache_views`` times with independent patch-dropout draws and every epoch picks one view per sample
  at random. This is our choice for speed; it keeps patch dropout but not image augmentation.
- online with image augmentation, as in the paper: RandomResizedCrop, horizontal flip and RandAugment applied
  jointly to the image and its mask (torchvision v2 transforms), backbone forward every step.

Inference gives every proposal the head's softmax and keeps the top-k (default 10) classes; the whole-image
("global") prediction is the head on the mean of all patch tokens. Checkpoints are safetensors holding the
head, the optimiser state, the epoch and the configuration (JSON metadata), so training resumes exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from multilabel_imagenet import classes

PatchExtractor = Callable[[torch.Tensor], torch.Tensor]
"""A frozen backbone: normalised images [B, 3, S, S] -> patch tokens [B, h, w, d] (CLS/registers dropped)."""


@dataclass
class LabelerConfig:
    """Every labeler setting; defaults from the paper's Supp. B.1 unless marked as our choice."""

    backbone: str = "vit_large_patch16_dinov3.lvd1689m"  # Supp. B.1: frozen DINOv3 ViT-L/16
    input_size: int = 512  # Supp. B.1: 512 x 512 -> 32 x 32 patches
    hidden: int = 1024  # Sec. 3.3 / REFERENCE.md section 2
    dropout: float = 0.1  # authors' code
    patch_drop: float = 0.25  # Supp. B.1 (the authors' code: 0.2)
    epochs: int = 300  # Supp. B.1
    batch_size: int = 512  # Supp. B.1 (global batch)
    lr: float = 0.1  # Supp. B.1
    momentum: float = 0.9  # Supp. B.1, Nesterov
    weight_decay: float = 1e-4  # Supp. B.1
    warmup_epochs: int = 5  # Supp. B.1, linear warm-up then cosine
    mask_threshold: float = 0.5  # our choice: a patch is foreground when the mask covers half of it
    cache_views: int = 4  # our choice: patch-dropout draws stored per sample in cached training
    top_k: int = 10  # our choice: classes stored per mask (the authors store 5)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> LabelerConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown labeler settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


class LabelerHead(nn.Module):
    """Dropout-Linear-GELU, twice, then Linear to ``num_classes``."""

    def __init__(self, in_dim: int, hidden: int = 1024, num_classes: int = classes.NUM_CLASSES, dropout: float = 0.1):
        super().__init__()
        self.in_dim, self.hidden, self.num_classes = in_dim, hidden, num_classes
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)


# ---------------------------------------------------------------- masks on the patch grid and pooling


def masks_to_grid(masks: torch.Tensor, grid: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """Project [M, H, W] masks onto an (h, w) patch grid: a patch is foreground when the mask covers at least
    ``threshold`` of it (area resampling, the image being resized to a square as the backbone sees it). A mask
    that covers no patch that much keeps its best-covered patch(es), so no proposal loses its feature."""
    masks = torch.as_tensor(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got shape {list(masks.shape)}")
    if len(masks) == 0:
        return torch.zeros(0, *grid, dtype=torch.bool)
    cover = F.interpolate(masks[:, None].float(), size=grid, mode="area")[:, 0]
    out = cover >= threshold
    empty = ~out.flatten(1).any(1)
    if empty.any():
        best = cover[empty].flatten(1).amax(1)
        out[empty] = (cover[empty] >= best[:, None, None]) & (best[:, None, None] > 0)
    return out


def drop_patches(grid_masks: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop ``rate`` of each mask's foreground patches at random (rounded down), keeping at least one."""
    if rate <= 0:
        return grid_masks
    flat = grid_masks.flatten(1)
    scores = torch.rand(flat.shape, generator=generator, device=flat.device)
    scores[~flat] = 2.0  # background never ranks among the foreground
    counts = flat.sum(1)
    n_drop = torch.minimum((counts * rate).floor().long(), (counts - 1).clamp(min=0))
    rank = scores.argsort(1).argsort(1)
    return (flat & (rank >= n_drop[:, None])).reshape(grid_masks.shape)


def masked_mean(features: torch.Tensor, grid_masks: torch.Tensor) -> torch.Tensor:
    """Mean of one image's patch tokens [h, w, d] under each of the [M, h, w] masks -> [M, d]."""
    weights = grid_masks.flatten(1).to(features.dtype)
    return weights @ features.flatten(0, 1) / weights.sum(1, keepdim=True).clamp(min=1)


def global_pool(features: torch.Tensor) -> torch.Tensor:
    """Mean of all patch tokens of [B, h, w, d] -> [B, d] (the whole-image feature)."""
    return features.flatten(1, 2).mean(1)


# ---------------------------------------------------------------- cached features


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
        grid = masks_to_grid(masks, features.shape[:2], config.mask_threshold) if len(masks) else None
        for indices, label in samples:
            union = (
                grid[list(indices)].any(0, keepdim=True)
                if indices
                else torch.ones(1, *features.shape[:2], dtype=torch.bool)
            )
            views = union.expand(config.cache_views, -1, -1)
            dropped = drop_patches(views, config.patch_drop, generator)
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


def save_checkpoint(
    path: str | Path,
    head: LabelerHead,
    config: LabelerConfig,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int = 0,
) -> None:
    """Head weights, optimiser momentum buffers and progress in one safetensors file (written atomically)."""
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    if optimizer is not None:
        for i, p in enumerate(head.parameters()):
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.momentum.{i}"] = buf.detach().cpu().contiguous()
    metadata = {
        "config": json.dumps(asdict(config)),
        "epoch": str(epoch),
        "in_dim": str(head.in_dim),
        "num_classes": str(head.num_classes),
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> tuple[LabelerHead, LabelerConfig, int, dict[str, torch.Tensor]]:
    """(head, config, epochs done, optimiser tensors) from a checkpoint written by :func:`save_checkpoint`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labeler checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        config = LabelerConfig.from_dict(json.loads(metadata["config"]))
        head = LabelerHead(int(metadata["in_dim"]), config.hidden, int(metadata["num_classes"]), config.dropout)
        head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    except Exception as err:  # safetensors, json and torch each raise their own types for a bad file
        raise ValueError(f"{path}: not a labeler checkpoint ({type(err).__name__}: {err})") from None
    optim = {k: v for k, v in tensors.items() if k.startswith("optim.")}
    return head, config, int(metadata["epoch"]), optim


def checkpoint_fingerprint(path: str | Path) -> str:
    """sha256 over a checkpoint's metadata and tensors, independent of how the file orders them (safetensors
    writes metadata in hash-map order, so equal checkpoints need not be equal bytes)."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        digest.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for key in sorted(f.keys()):
            tensor = f.get_tensor(key).contiguous()
            digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()


def _restore_optimizer(optimizer: torch.optim.Optimizer, head: nn.Module, optim: dict[str, torch.Tensor]) -> None:
    for i, p in enumerate(head.parameters()):
        buf = optim.get(f"optim.momentum.{i}")
        if buf is not None:
            optimizer.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype)


def fit(
    head: LabelerHead,
    config: LabelerConfig,
    epoch_batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
    steps_per_epoch: int,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    log: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    checkpoint_seconds: float = 60.0,
) -> LabelerHead:
    """The training loop shared by cached and online training: ``epoch_batches(epoch)`` yields
    ``(pooled features [B, d], labels [B])``. Saves ``checkpoint`` at the end of an epoch once
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
    bar = tqdm(total=config.epochs, initial=start, unit="epoch", desc="train labeler", disable=not progress)
    for epoch in range(start, config.epochs):
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout draws: the same epoch gives the same steps
        head.train()
        seen = correct = 0
        loss_sum = 0.0
        for step, (x, y) in enumerate(epoch_batches(epoch)):
            lr = learning_rate(config, epoch * steps_per_epoch + step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = x.to(device, torch.float32), y.to(device)
            logits = head(x)
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
            yield cache.features[idx, view[idx]], cache.labels[idx]

    torch.manual_seed(config.seed)
    head = LabelerHead(cache.features.shape[-1], config.hidden, num_classes, config.dropout)
    return fit(head, config, epoch_batches, steps, **fit_kwargs)


# ---------------------------------------------------------------- online training with joint augmentation


class JointRandAugment:
    """RandAugment (Cubuk et al. 2020) on an (image, mask) pair, with torchvision's operation space and
    magnitudes (2 operations, magnitude 9 of 31 bins). torchvision's own RandAugment refuses masks; here the
    geometric operations (shear, translate, rotate) move the mask with the image (nearest interpolation) and the
    photometric ones leave it alone."""

    GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
    PHOTOMETRIC = (
        "identity",
        "brightness",
        "color",
        "contrast",
        "sharpness",
        "posterize",
        "solarize",
        "autocontrast",
        "equalize",
    )

    def __init__(self, num_ops: int = 2, magnitude: int = 9, bins: int = 31):
        self.num_ops, self.level, self.bins = num_ops, magnitude / (bins - 1), bins

    def _apply(self, op: str, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        sign = 1.0 if torch.rand(()) < 0.5 else -1.0
        height, width = image.shape[-2:]
        if op in self.GEOMETRIC:
            shear, translate, angle = [0.0, 0.0], [0, 0], 0.0
            if op == "shear_x":
                shear[0] = math.degrees(math.atan(sign * 0.3 * self.level))
            elif op == "shear_y":
                shear[1] = math.degrees(math.atan(sign * 0.3 * self.level))
            elif op == "translate_x":
                translate[0] = int(sign * 150.0 / 331.0 * width * self.level)
            elif op == "translate_y":
                translate[1] = int(sign * 150.0 / 331.0 * height * self.level)
            else:
                angle = sign * 30.0 * self.level
            centre = [0.0, 0.0] if op.startswith("shear") else None
            args = dict(angle=angle, translate=translate, scale=1.0, shear=shear, center=centre)
            return (
                TF.affine(image, interpolation=InterpolationMode.NEAREST, **args),
                TF.affine(mask, interpolation=InterpolationMode.NEAREST, **args),
            )
        factor = 1.0 + sign * 0.9 * self.level
        if op == "brightness":
            image = TF.adjust_brightness(image, factor)
        elif op == "color":
            image = TF.adjust_saturation(image, factor)
        elif op == "contrast":
            image = TF.adjust_contrast(image, factor)
        elif op == "sharpness":
            image = TF.adjust_sharpness(image, factor)
        elif op == "posterize":
            image = TF.posterize(image, 8 - int(round(self.level * 4)))
        elif op == "solarize":
            image = TF.solarize(image, 255.0 * (1.0 - self.level))
        elif op == "autocontrast":
            image = TF.autocontrast(image)
        elif op == "equalize":
            image = TF.equalize(image)
        return image, mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ops = self.GEOMETRIC + self.PHOTOMETRIC
        for _ in range(self.num_ops):
            image, mask = self._apply(ops[int(torch.randint(len(ops), ()))], image, mask)
        return image, mask


def joint_augmentation(size: int, rand_augment: bool = True) -> Callable:
    """RandomResizedCrop + horizontal flip + RandAugment on an (image, mask) pair together (Supp. B.1):
    geometric operations move both, photometric ones touch the image only."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    return v2.Compose(steps + [JointRandAugment()] if rand_augment else steps)


def train_online(
    samples: Sequence[tuple[np.ndarray, np.ndarray, int]],
    extractor: PatchExtractor,
    config: LabelerConfig,
    normalise: Callable[[torch.Tensor], torch.Tensor],
    num_classes: int = classes.NUM_CLASSES,
    in_dim: int | None = None,
    **fit_kwargs,
) -> LabelerHead:
    """Train with per-step image augmentation. ``samples``: (image H x W x 3 uint8, mask H x W bool, class);
    ``normalise`` maps a uint8 [B, 3, S, S] batch to the backbone's input."""
    from torchvision import tv_tensors

    augment = joint_augmentation(config.input_size)
    steps = math.ceil(len(samples) / config.batch_size)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(samples), generator=g).tolist()
        for i in range(0, len(order), config.batch_size):
            images, masks, labels = [], [], []
            for j in order[i : i + config.batch_size]:
                image, mask, label = samples[j]
                img, msk = augment(
                    tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
                    tv_tensors.Mask(torch.from_numpy(np.asarray(mask, dtype=np.uint8))[None]),
                )
                images.append(img)
                masks.append(msk[0].bool())
                labels.append(label)
            with torch.no_grad():
                feats = extractor(normalise(torch.stack(images)))
            grids = masks_to_grid(torch.stack(masks), feats.shape[1:3], config.mask_threshold)
            grids = drop_patches(grids, config.patch_drop, g)
            pooled = torch.stack([masked_mean(f.float(), m[None])[0] for f, m in zip(feats, grids, strict=True)])
            yield pooled, torch.tensor(labels)

    if in_dim is None:
        probe = samples[0][0]
        with torch.no_grad():
            resized = F.interpolate(torch.from_numpy(probe).permute(2, 0, 1)[None].float(), size=config.input_size)
            in_dim = extractor(normalise(resized.to(torch.uint8))).shape[-1]
    torch.manual_seed(config.seed)
    head = LabelerHead(in_dim, config.hidden, num_classes, config.dropout)
    return fit(head, config, epoch_batches, steps, **fit_kwargs)


# ---------------------------------------------------------------- inference


@torch.no_grad()
def top_k(head: LabelerHead, pooled: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of the head over [M, d] pooled features; the k best classes (int16) and probabilities
    (float32) per row, best first."""
    head.eval()
    param = next(head.parameters())
    probs = torch.softmax(head(pooled.to(param.device, param.dtype)).float(), dim=1)
    scores, idx = probs.topk(min(k, probs.shape[1]), dim=1)
    return idx.cpu().numpy().astype(np.int16), scores.cpu().numpy().astype(np.float32)


@dataclass
class ImageLabels:
    """The labeler's output for one image: top-k per proposal, and top-k of the whole image."""

    mask_classes: np.ndarray  # [M, k] int16
    mask_scores: np.ndarray  # [M, k] float32
    global_classes: np.ndarray  # [k] int16
    global_scores: np.ndarray  # [k] float32


def rank_masks(
    head: LabelerHead, features: torch.Tensor, masks: torch.Tensor | np.ndarray, k: int, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best classes and probabilities ([M, k] each) of the [M, H, W] masks of one image (patch tokens
    [h, w, d]): each mask projected onto the patch grid (:func:`masks_to_grid` at ``threshold``), the tokens under
    it averaged (:func:`masked_mean`) and the head's softmax ranked (:func:`top_k`)."""
    grid = masks_to_grid(torch.as_tensor(np.asarray(masks, dtype=bool)), features.shape[:2], threshold)
    if not len(grid):
        return np.zeros((0, k), np.int16), np.zeros((0, k), np.float32)
    return top_k(head, masked_mean(features.float(), grid), k)


def label_image(
    head: LabelerHead, features: torch.Tensor, masks: torch.Tensor | np.ndarray, config: LabelerConfig
) -> ImageLabels:
    """Label every proposal of one image (patch tokens [h, w, d], masks [M, H, W]) and the whole image."""
    mask_classes, mask_scores = rank_masks(head, features, masks, config.top_k, config.mask_threshold)
    global_classes, global_scores = top_k(head, global_pool(features.float()[None]), config.top_k)
    return ImageLabels(mask_classes, mask_scores, global_classes[0], global_scores[0])


@torch.no_grad()
def label_map(head: LabelerHead, features: torch.Tensor, size: int = 15, k: int = 5) -> np.ndarray:
    """A ReLabel-format map from our labeler (paper Supp. F.3): the patch tokens [h, w, d] average-pooled to a
    ``size`` x ``size`` grid of cells, the head applied to each cell, and per cell the top-``k`` logits and their
    class indices as floats -> float32 [2, k, size, size] (rows = image rows), readable by
    :func:`multilabel_imagenet.builder.relabel_maps.read_map` for the default 15 x 15, top-5."""
    head.eval()
    param = next(head.parameters())
    cells = F.adaptive_avg_pool2d(features.float().permute(2, 0, 1)[None], size)[0]  # [d, S, S]
    logits = head(cells.flatten(1).T.to(param.device, param.dtype)).float()  # [S*S, classes]
    top, idx = logits.topk(k, dim=1)
    out = torch.stack([top.T, idx.T.float()]).reshape(2, k, size, size)
    return out.cpu().numpy().astype(np.float32)
