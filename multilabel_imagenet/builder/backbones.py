"""Patch-feature extractors for MaskCut: self-supervised ViTs (timm, transformers) and a non-learned one.

An extractor maps a normalised image batch (B, 3, H, W), H and W multiples of its patch size, to patch
features (B, H/p, W/p, d) in float32, CLS and register tokens dropped (REFERENCE.md section 1 step 2):

* ``q``, ``k``, ``v``: the LAST block's attention input projections, heads concatenated (d = embed dim), as
  the attention computes them (biases included, q/k normalisation applied where a model has it, before any
  rotary position embedding, which encodes position rather than content); the forward pass stops there;
* ``patch``: the final (normalised) patch tokens.

Weights come from a timm name or a transformers Hub id (online), or from a local safetensors file / a
``save_pretrained`` folder (offline); nothing is ever unpickled. The forward pass runs in float32 by default,
as the authors' MaskCut does (bf16 autocast can flip affinities that sit near tau); ``precision="bf16"`` runs it
under bf16 autocast on any device. Features are returned in float32.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from multilabel_imagenet.builder.configs import FEATURES

# ImageNet mean/std normalisation (REFERENCE.md section 1 step 1; CutLER's MaskCut uses these for DINO).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOUR_TEXTURE = "colour-texture"


class Extractor(Protocol):
    """Anything that turns a normalised (B, 3, H, W) batch into (B, H/p, W/p, d) float32 patch features."""

    patch_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def resize(images: Sequence[Image.Image | np.ndarray], size: int) -> list[np.ndarray]:
    """Step 1, first half: each image resized to size x size (LANCZOS, aspect ratio ignored), RGB uint8."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    resized = []
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"image {i}: expected H x W x 3 uint8 array, got {im.shape} {im.dtype}")
            im = Image.fromarray(im)
        rgb = im if im.mode == "RGB" else im.convert("RGB")
        resized.append(np.array(rgb.resize((size, size), Image.Resampling.LANCZOS)))
    if not resized:
        raise ValueError("no images given")
    return resized


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """Step 1, second half: a (B, H, W, 3) uint8 batch -> (B, 3, H, W) float32 with ImageNet mean/std, on the
    batch's device."""
    x = batch.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess(images: Sequence[Image.Image | np.ndarray], size: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Step 1: :func:`resize` then :func:`normalise`. Returns the normalised batch (B, 3, size, size) and the
    resized RGB images (uint8, for the CRF)."""
    resized = resize(images, size)
    return normalise(torch.from_numpy(np.stack(resized))), resized


def resized_batch(images: Sequence[Image.Image | np.ndarray], size: int) -> torch.Tensor:
    """:func:`resize`, stacked: (B, size, size, 3) uint8 on the CPU."""
    return torch.from_numpy(np.stack(resize(images, size)))


@torch.no_grad()
def tokens(extractor: Extractor, batch: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """A (B, S, S, 3) uint8 batch moved to ``device``, normalised there and run through ``extractor``: float32
    patch features [B, h, w, d] on the CPU."""
    return extractor(normalise(batch.to(device, non_blocking=True))).float().cpu()


def patch_tokens(
    extractor: Extractor, images: Sequence[Image.Image | np.ndarray], size: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """:func:`tokens` of ``images`` resized to ``size`` (:func:`resized_batch`)."""
    return tokens(extractor, resized_batch(images, size), device)


def _check_input(images: torch.Tensor, patch: int) -> tuple[int, int]:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[2:]
    if h % patch or w % patch:
        raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {patch}")
    return h // patch, w // patch


PRECISIONS = ("fp32", "bf16")
"""Backbone forward precision: float32 (the authors' and the paper preset's), or bf16 autocast (faster on GPUs)."""


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def _split_heads_norm(t: torch.Tensor, norm: torch.nn.Module | None, heads: int) -> torch.Tensor:
    """Apply a per-head q/k norm (timm's q_norm/k_norm; identity for DINO models) to (B, N, C)."""
    if norm is None or isinstance(norm, torch.nn.Identity):
        return t
    b, n, c = t.shape
    return norm(t.reshape(b, n, heads, c // heads).transpose(1, 2)).transpose(1, 2).reshape(b, n, c)


class _Captured(Exception):
    """Raised by a hook once the last block's q/k/v projection input (timm) or output (transformers) is
    captured: nothing after it changes those features, so the rest of the forward pass is skipped (the last
    block's attention and MLP: 2.8% of the paper ensemble's FLOPs, benchmarks/paper_bounds.py)."""


def _forward(
    forward: Callable[[], torch.Tensor],
    device: torch.device,
    precision: str,
    module: torch.nn.Module | None = None,
    *,
    pre: bool = False,
) -> torch.Tensor:
    """``forward()`` under :func:`_autocast`; with ``module``, the input (``pre``) or output of its first call
    instead, the pass stopped there."""
    if module is None:
        with _autocast(device, precision):
            return forward()
    captured: list[torch.Tensor] = []

    def grab(_module: torch.nn.Module, args: tuple, kwargs_or_output) -> None:
        captured.append((args[0] if args else kwargs_or_output["x"]) if pre else kwargs_or_output)
        raise _Captured

    hook = module.register_forward_pre_hook(grab, with_kwargs=True) if pre else module.register_forward_hook(grab)
    try:
        with _autocast(device, precision), contextlib.suppress(_Captured):
            forward()
    finally:
        hook.remove()
    if not captured:
        raise RuntimeError(f"the forward pass never reached {type(module).__name__}")
    return captured[0]


class TimmExtractor:
    """Features of a timm ViT (VisionTransformer: DINO, DINOv2 with/without registers; Eva: DINOv3)."""

    def __init__(self, model: torch.nn.Module, feature: str, precision: str = "fp32"):
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        self.precision = _check_precision(precision)
        if not hasattr(model, "blocks") or not hasattr(model, "num_prefix_tokens"):
            raise ValueError(f"{type(model).__name__} is not a timm ViT (no blocks / num_prefix_tokens)")
        self.model = model.eval()
        self.feature = feature
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.device = next(model.parameters()).device

    def _qkv(self, attn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The attention's projection of its input x for self.feature, heads concatenated (B, N, C)."""
        index = "qkv".index(self.feature)
        if getattr(attn, "qkv", None) is not None:
            out = attn.qkv(x)
            q_bias = getattr(attn, "q_bias", None)
            if q_bias is not None:  # Eva keeps q/k/v biases outside the qkv Linear
                bias = torch.cat((q_bias, attn.k_bias, attn.v_bias))
                out = out + bias if getattr(attn, "qkv_bias_separate", False) else F.linear(x, attn.qkv.weight, bias)
            t = out.chunk(3, dim=-1)[index]
        else:
            t = getattr(attn, f"{self.feature}_proj")(x)
        if self.feature in "qk":
            t = _split_heads_norm(t, getattr(attn, f"{self.feature}_norm", None), attn.num_heads)
        return t

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = _check_input(images, self.patch_size)
        images = images.to(self.device)
        attn = None if self.feature == "patch" else self.model.blocks[-1].attn
        tokens = _forward(lambda: self.model.forward_features(images), self.device, self.precision, attn, pre=True)
        if attn is not None:  # tokens: the last attention's input
            with _autocast(self.device, self.precision):
                tokens = self._qkv(attn, tokens)
        patches = tokens[:, self.model.num_prefix_tokens :].float()
        return patches.reshape(images.shape[0], gh, gw, -1)


class HFExtractor:
    """Features of a transformers DINOv2 / DINOv2-with-registers / DINOv3 ViT model."""

    def __init__(self, model: torch.nn.Module, feature: str, precision: str = "fp32"):
        if feature not in FEATURES:
            raise ValueError(f"feature must be one of {FEATURES}, got {feature!r}")
        self.precision = _check_precision(precision)
        self.model = model.eval()
        self.feature = feature
        config = model.config
        patch = config.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.num_prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        attns = [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj"))]
        if not attns:
            raise ValueError(f"{type(model).__name__}: no attention module with q_proj/k_proj/v_proj found")
        self.attn = attns[-1]  # modules() is in definition order: the last block's attention
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = _check_input(images, self.patch_size)
        images = images.to(self.device)
        projection = None if self.feature == "patch" else getattr(self.attn, f"{self.feature}_proj")
        forward = lambda: self.model(pixel_values=images).last_hidden_state  # noqa: E731
        tokens = _forward(forward, self.device, self.precision, projection)
        patches = tokens[:, self.num_prefix :].float()
        return patches.reshape(images.shape[0], gh, gw, -1)


@dataclass(frozen=True)
class ColourTextureExtractor:
    """Deterministic, weight-free patch features from colour and texture statistics.

    For the synthetic demo and tests where no trained ViT exists (it is not a substitute for one on real
    images). Each pixel gets a unit vector: a constant ``bias`` component, a soft hue histogram (``hue_bins``
    bins of width ``hue_sigma_deg``) scaled by the chroma above ``chroma_floor``, and indicators of very dark /
    very bright luminance and of luminance edges above ``edge_floor``. Plain low-saturation pixels all point
    along the bias axis; saturated, extreme or edge pixels point away from it. A patch's feature is the mean
    of its pixels' unit vectors (so a patch straddling a boundary points in proportion to its coverage), mixed
    with the mean over its ``context_size`` x ``context_size`` neighbourhood (weight ``context``) so that
    textures whose cells are larger than a patch stay coherent. Input: the normalised batch from
    :func:`preprocess`.
    """

    patch_size: int = 8
    hue_bins: int = 24
    hue_sigma_deg: float = 20.0
    chroma_floor: float = 0.12
    bias: float = 0.15
    dark: float = 35 / 255
    bright: float = 225 / 255
    edge_floor: float = 0.1
    context_size: int = 3
    context: float = 0.5

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = _check_input(images, self.patch_size)
        mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
        rgb = (images.float() * std + mean).clamp(0, 1)
        r, g, b = rgb.unbind(1)
        chroma = (rgb.amax(1) - rgb.amin(1) - self.chroma_floor).clamp_min(0).unsqueeze(1)
        hue = torch.atan2(math.sqrt(3.0) * (g - b), 2 * r - g - b)  # radians, opponent-colour hue angle
        centres = torch.arange(self.hue_bins, device=images.device) * (2 * math.pi / self.hue_bins)
        delta = torch.remainder(hue.unsqueeze(1) - centres.view(1, -1, 1, 1) + math.pi, 2 * math.pi) - math.pi
        soft = torch.exp(-0.5 * (delta / math.radians(self.hue_sigma_deg)) ** 2)
        soft = soft / soft.norm(dim=1, keepdim=True)
        lum = (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
        dark, bright = (lum < self.dark).float(), (lum > self.bright).float()
        padded = F.pad(lum, (1, 1, 1, 1), mode="replicate")
        grad = torch.hypot(
            padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2], padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
        )
        edge = (grad / 2 - self.edge_floor).clamp_min(0)
        pixel = torch.cat([torch.full_like(lum, self.bias), chroma * soft, dark, bright, edge], dim=1)
        pooled = F.avg_pool2d(F.normalize(pixel, dim=1), self.patch_size)
        k = self.context_size
        smooth = F.avg_pool2d(pooled, k, stride=1, padding=k // 2, count_include_pad=False)
        feats = (1 - self.context) * pooled + self.context * smooth
        return feats.permute(0, 2, 3, 1).reshape(images.shape[0], gh, gw, -1).contiguous()


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def load_backbone(
    backbone: str,
    feature: str,
    *,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    model_kwargs: dict | None = None,
    precision: str = "fp32",
) -> Extractor:
    """Load a feature extractor.

    ``backbone``: ``"colour-texture"``; ``"hf:<hub id or folder>"`` or a ``save_pretrained`` folder for
    transformers models; otherwise a timm model name (e.g. ``vit_base_patch8_224.dino``). ``weights``: a
    local safetensors file for a timm model (or a folder for transformers); without it, pretrained weights
    are fetched from the Hub (online). ``model_kwargs`` override the timm architecture (tests build tiny
    models this way). ``precision``: see :data:`PRECISIONS` (the colour-texture extractor is always float32).
    """
    _check_precision(precision)
    if backbone == COLOUR_TEXTURE:
        return ColourTextureExtractor()
    device = torch.device(device)
    folder = Path(backbone[3:] if backbone.startswith("hf:") else backbone)
    if backbone.startswith("hf:") or _is_hf_folder(folder):
        from transformers import AutoModel

        source = str(weights) if weights is not None else str(folder)
        model = AutoModel.from_pretrained(source, use_safetensors=True)
        return HFExtractor(model.to(device), feature, precision)
    import timm

    kwargs = {"num_classes": 0, "dynamic_img_size": True, **(model_kwargs or {})}
    if weights is not None:
        path = Path(weights)
        if path.suffix != ".safetensors" or not path.is_file():
            raise ValueError(f"weights must be an existing .safetensors file, got {path}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        model = timm.create_model(backbone, pretrained=True, **kwargs)
    except RuntimeError as err:
        raise ValueError(f"could not load timm model {backbone!r} (weights={weights}): {err}") from err
    return TimmExtractor(model.to(device), feature, precision)


def cached_extractor(
    cache: dict,
    backbone: str,
    feature: str,
    weights: Mapping[str, str | Path],
    device: str | torch.device,
    precision: str = "fp32",
) -> Extractor:
    """``cache[(backbone, feature)]``, loaded on first use (:func:`load_backbone`) with the local weights
    ``weights[backbone]`` if any."""
    key = (backbone, feature)
    if key not in cache:
        cache[key] = load_backbone(backbone, feature, weights=weights.get(backbone), device=device, precision=precision)
    return cache[key]
