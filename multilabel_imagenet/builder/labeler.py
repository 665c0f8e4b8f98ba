"""The region labeler (paper Sec. 3.2-3.3, Supp. B.1): a frozen ViT, masked mean pooling, an MLP head.

A proposal mask is projected onto the backbone's patch grid; its pooled feature is the mean of the patch
tokens under it. Training drops 25% of the foreground patches before pooling (Supp. B.1; the authors' code
uses 20%). The head is Dropout-Linear-GELU twice, then Linear to 1000 classes (hidden 1024), trained with
cross-entropy by SGD with Nesterov momentum and a cosine schedule after a linear warm-up (:mod:`.labeler_train`).

Where the released code (github jchen175/MultiLabel-ImageNet, ``code/labeler``) differs from the paper's text,
a setting reproduces it (the build's ``profile: authors`` sets them all, docs/build.md):

- ``pooling="logits"``: the head on every patch token, its logits averaged under the mask (``pool_first=False``,
  the training script's default) instead of the head on the averaged feature (the paper's equation);
- ``patch_rule="bilinear"``: a patch is foreground where the mask, bilinearly resampled to the patch grid at
  the patches' centres (half-pixel centres, no antialiasing), is non-zero (the script's resize, then
  ``util.py``'s ``mask.bool()``) instead of our "covers at least ``mask_threshold`` of the patch";
- ``drop_rule="bernoulli"``: each foreground patch dropped with probability ``patch_drop``, and a mask left with
  no patch pooled over the whole image (``util.py``) instead of dropping exactly ``floor(rate * n)`` of them and
  keeping at least one.

Inference gives every proposal the head's softmax and keeps the top-k (default 10) classes; the whole-image
("global") prediction pools all patch tokens. Checkpoints are safetensors holding the head, the optimiser
state, the epoch and the configuration (JSON metadata), so training resumes exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from multilabel_imagenet import atomic, classes

PatchExtractor = Callable[[torch.Tensor], torch.Tensor]
"""A frozen backbone: normalised images [B, 3, S, S] -> patch tokens [B, h, w, d] (CLS/registers dropped)."""

TRAINING_MODES = ("online", "cached")
POOLINGS = ("features", "logits")
PATCH_RULES = ("area", "bilinear")
DROP_RULES = ("count", "bernoulli")


@dataclass
class LabelerConfig:
    """Every labeler setting; defaults from the paper's Supp. B.1 unless marked as our choice."""

    backbone: str = "vit_large_patch16_dinov3.lvd1689m"  # Supp. B.1: frozen DINOv3 ViT-L/16
    input_size: int = 512  # Supp. B.1: 512 x 512 -> 32 x 32 patches
    hidden: int = 1024  # Sec. 3.3 / REFERENCE.md section 2
    dropout: float = 0.1  # authors' code
    patch_drop: float = 0.25  # Supp. B.1 (the authors' script defaults to 0.2)
    epochs: int = 300  # Supp. B.1
    batch_size: int = 512  # Supp. B.1 (global batch)
    lr: float = 0.1  # Supp. B.1
    momentum: float = 0.9  # Supp. B.1, Nesterov
    weight_decay: float = 1e-4  # Supp. B.1
    warmup_epochs: int = 5  # Supp. B.1, linear warm-up then cosine
    training: str = "online"  # Supp. B.1: augmented images every step; "cached": our fast option (no augmentation)
    pooling: str = "features"  # Sec. 3.2's equation; "logits": the authors' script
    patch_rule: str = "area"  # our choice: foreground = covers mask_threshold of the patch; "bilinear": authors'
    mask_threshold: float = 0.5  # our choice, for patch_rule="area"
    drop_rule: str = "count"  # our reading of "drop 25%"; "bernoulli": the authors' code
    cache_views: int = 4  # our choice: patch-dropout draws stored per sample in cached training
    top_k: int = 10  # our choice: classes stored per mask (the authors store 5)
    seed: int = 0

    def __post_init__(self) -> None:
        choices = {
            "training": TRAINING_MODES,
            "pooling": POOLINGS,
            "patch_rule": PATCH_RULES,
            "drop_rule": DROP_RULES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"labeler {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.training == "cached" and self.pooling == "logits":
            raise ValueError("labeler pooling 'logits' needs training 'online' (the cache holds pooled features)")

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


def masks_to_grid(
    masks: torch.Tensor, grid: tuple[int, int], threshold: float = 0.5, rule: str = "area"
) -> torch.Tensor:
    """Project [M, H, W] masks onto an (h, w) patch grid, the image being resized to a square as the backbone
    sees it. ``rule="area"``: a patch is foreground when the mask covers at least ``threshold`` of it (area
    resampling); ``"bilinear"``: when the mask, bilinearly sampled at the patch's centre (half-pixel centres, no
    antialiasing), is non-zero (the authors' code). A mask that gives no patch keeps its best-covered patch(es),
    so no proposal loses its feature; a mask without any pixel stays empty."""
    masks = torch.as_tensor(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [M, H, W], got shape {list(masks.shape)}")
    if rule not in PATCH_RULES:
        raise ValueError(f"patch rule must be one of {PATCH_RULES}, got {rule!r}")
    if len(masks) == 0:
        return torch.zeros(0, *grid, dtype=torch.bool, device=masks.device)
    cover = F.interpolate(masks[:, None].float(), size=grid, mode="area")[:, 0]
    if rule == "area":
        out = cover >= threshold
    else:
        sampled = F.interpolate(masks[:, None].float(), size=grid, mode="bilinear", align_corners=False)
        out = sampled[:, 0] > 0
    empty = ~out.flatten(1).any(1)
    if empty.any():
        best = cover[empty].flatten(1).amax(1)
        out[empty] = (cover[empty] >= best[:, None, None]) & (best[:, None, None] > 0)
    return out


def drop_patches(
    grid_masks: torch.Tensor, rate: float, generator: torch.Generator | None = None, rule: str = "count"
) -> torch.Tensor:
    """Patch dropout on [M, h, w] grid masks. ``rule="count"``: drop ``floor(rate * n)`` of each mask's n
    foreground patches at random, keeping at least one. ``"bernoulli"`` (the authors' code): drop each
    foreground patch with probability ``rate``; a mask left with none becomes the whole grid. The random numbers
    are drawn on ``generator``'s device."""
    if rule not in DROP_RULES:
        raise ValueError(f"drop rule must be one of {DROP_RULES}, got {rule!r}")
    if rate <= 0:
        return grid_masks
    flat = grid_masks.flatten(1)
    where = generator.device if generator is not None else flat.device
    scores = torch.rand(flat.shape, generator=generator, device=where).to(flat.device)
    if rule == "bernoulli":
        kept = flat & (scores < 1.0 - rate)
        kept[~kept.any(1)] = True
        return kept.reshape(grid_masks.shape)
    scores[~flat] = 2.0  # background never ranks among the foreground
    counts = flat.sum(1)
    n_drop = torch.minimum((counts * rate).floor().long(), (counts - 1).clamp(min=0))
    rank = scores.argsort(1).argsort(1)
    return (flat & (rank >= n_drop[:, None])).reshape(grid_masks.shape)


def pooled_logits(head: nn.Module, tokens: torch.Tensor, weights: torch.Tensor, pooling: str) -> torch.Tensor:
    """The head's logits [B, C] of B regions: ``weights`` [B, N] (bool) select patches of ``tokens``, either
    [N, d] (one image, shared by all regions) or [B, N, d] (one image per region). ``pooling="features"`` averages
    the selected tokens and applies the head; ``"logits"`` applies the head to every token and averages its
    logits over the selected ones (the authors' ``pool_first=False``)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    w = weights.flatten(1).to(tokens.dtype)
    w = w / w.sum(1, keepdim=True).clamp(min=1)
    spec = "bn,nk->bk" if tokens.ndim == 2 else "bn,bnk->bk"
    if pooling == "features":
        return head(torch.einsum(spec, w, tokens))
    return torch.einsum(spec, w, head(tokens))


def masked_mean(features: torch.Tensor, grid_masks: torch.Tensor) -> torch.Tensor:
    """Mean of one image's patch tokens [h, w, d] under each of the [M, h, w] masks -> [M, d]."""
    weights = grid_masks.flatten(1).to(features.dtype)
    return weights @ features.flatten(0, 1) / weights.sum(1, keepdim=True).clamp(min=1)


# ---------------------------------------------------------------- checkpoints


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
    tmp = atomic.temporary(path)  # two trainings on one work directory never share one
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


# ---------------------------------------------------------------- inference


def _ranked(logits: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    probs = torch.softmax(logits.float(), dim=1)
    scores, idx = probs.topk(min(k, probs.shape[1]), dim=1)
    return idx.cpu().numpy().astype(np.int16), scores.cpu().numpy().astype(np.float32)


@torch.no_grad()
def top_k(head: LabelerHead, pooled: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of the head over [M, d] pooled features; the k best classes (int16) and probabilities
    (float32) per row, best first."""
    head.eval()
    param = next(head.parameters())
    return _ranked(head(pooled.to(param.device, param.dtype)), k)


@dataclass
class ImageLabels:
    """The labeler's output for one image: top-k per proposal, and top-k of the whole image."""

    mask_classes: np.ndarray  # [M, k] int16
    mask_scores: np.ndarray  # [M, k] float32
    global_classes: np.ndarray  # [k] int16
    global_scores: np.ndarray  # [k] float32


@torch.no_grad()
def rank_masks(
    head: LabelerHead,
    features: torch.Tensor,
    masks: torch.Tensor | np.ndarray,
    k: int,
    threshold: float = 0.5,
    pooling: str = "features",
    patch_rule: str = "area",
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best classes and probabilities ([M, k] each) of the [M, H, W] masks of one image (patch tokens
    [h, w, d]): each mask projected onto the patch grid (:func:`masks_to_grid` by ``patch_rule`` at
    ``threshold``), pooled by ``pooling`` (:func:`pooled_logits`) and the head's softmax ranked."""
    grid = masks_to_grid(torch.as_tensor(np.asarray(masks, dtype=bool)), features.shape[:2], threshold, patch_rule)
    if not len(grid):
        return np.zeros((0, k), np.int16), np.zeros((0, k), np.float32)
    head.eval()
    param = next(head.parameters())
    tokens = features.flatten(0, 1).to(param.device, param.dtype)
    return _ranked(pooled_logits(head, tokens, grid.to(param.device), pooling), k)


@torch.no_grad()
def label_image(
    head: LabelerHead, features: torch.Tensor, masks: torch.Tensor | np.ndarray, config: LabelerConfig
) -> ImageLabels:
    """Label every proposal of one image (patch tokens [h, w, d], masks [M, H, W]) and the whole image (all
    patches, pooled by ``config.pooling``)."""
    mask_classes, mask_scores = rank_masks(
        head, features, masks, config.top_k, config.mask_threshold, config.pooling, config.patch_rule
    )
    param = next(head.parameters())
    tokens = features.flatten(0, 1).to(param.device, param.dtype)
    everything = torch.ones(1, len(tokens), dtype=torch.bool, device=param.device)
    global_logits = pooled_logits(head.eval(), tokens, everything, config.pooling)
    global_classes, global_scores = _ranked(global_logits, config.top_k)
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
