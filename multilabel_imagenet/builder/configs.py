"""MaskCut configurations as data, and named presets (the paper's four-configuration ensemble)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Feature = Literal["q", "k", "v", "patch"]
FEATURES: tuple[str, ...] = ("q", "k", "v", "patch")
# Dense-CRF implementations (builder/crf.py): "torch" (batched, CPU or CUDA, the same mean-field on the same
# permutohedral-lattice approximation) or "pydensecrf" (the published code, one mask per CPU core call).
CRF_BACKENDS: tuple[str, ...] = ("torch", "pydensecrf")

# Dense-CRF parameters as published by CutLER's MaskCut and reused by the paper (REFERENCE.md section 1
# step 9; paper Supp. A.1): Gaussian sxy=3 compat=7, bilateral sxy=50 srgb=5 compat=10, 10 mean-field steps.
CRF_GAUSSIAN_SXY = 3.0
CRF_GAUSSIAN_COMPAT = 7.0
CRF_BILATERAL_SXY = 50.0
CRF_BILATERAL_SRGB = 5.0
CRF_BILATERAL_COMPAT = 10.0
CRF_ITERATIONS = 10

# Cross-configuration deduplication is OUR decision (REFERENCE.md section 1: the paper does not say how
# proposals of several configurations are merged; the authors' code only concatenates them). Two proposals
# from different configurations whose masks overlap with IoU above this threshold are near-duplicates.
DEFAULT_DEDUP_IOU = 0.9


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF refinement parameters (defaults: the published ones)."""

    gaussian_sxy: float = CRF_GAUSSIAN_SXY
    gaussian_compat: float = CRF_GAUSSIAN_COMPAT
    bilateral_sxy: float = CRF_BILATERAL_SXY
    bilateral_srgb: float = CRF_BILATERAL_SRGB
    bilateral_compat: float = CRF_BILATERAL_COMPAT
    iterations: int = CRF_ITERATIONS


@dataclass(frozen=True)
class MaskCutConfig:
    """One MaskCut configuration: which features, at which input size, cut how.

    ``backbone`` is a timm model name (optionally ``hf-hub:``/``timm/`` prefixed), a transformers Hub id
    prefixed ``hf:``, a local safetensors file or model folder (see :mod:`backbones`), or ``"colour-texture"``
    for the deterministic non-learned extractor. ``input_size`` is the side of the square the image is resized
    to and must be a multiple of the backbone's patch size. ``tau`` is the affinity threshold, ``n`` the number
    of cut iterations (the most proposals per image). ``crf`` switches the dense-CRF refinement on;
    ``crf_backend`` chooses its implementation (OUR default "torch": it runs batched on the GPU and its masks
    agree with the published pydensecrf's, docs/discover.md; "pydensecrf" is the exact reference).
    ``seed_tie_rtol`` chooses the seed patch of each cut among the eigenvector's largest entries: 0 (the default)
    is numpy's exact argmax, as CutLER's maskcut.py takes it; a positive value (``maskcut.SEED_TIE_RTOL`` = 1e-4,
    this project's earlier rule) takes the first patch within that fraction of max|x| of the maximum: the fast
    float32 solver then picks the exact float64 one's seed among entries tied in exact arithmetic without solving
    again (with 0 it solves such graphs again exactly, ``maskcut.seed_decided``), but the masks depart from the
    published ones where the near-tied patches lie in different objects (docs/discover.md, "Ties").
    """

    name: str
    backbone: str
    feature: Feature
    input_size: int
    tau: float
    n: int
    crf: bool
    crf_backend: str = "torch"
    seed_tie_rtol: float = 0.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("MaskCutConfig.name must not be empty")
        if self.feature not in FEATURES:
            raise ValueError(f"MaskCutConfig {self.name!r}: feature must be one of {FEATURES}, got {self.feature!r}")
        if self.input_size <= 0:
            raise ValueError(f"MaskCutConfig {self.name!r}: input_size must be positive, got {self.input_size}")
        if not -1.0 <= self.tau < 1.0:
            raise ValueError(f"MaskCutConfig {self.name!r}: tau must be in [-1, 1), got {self.tau}")
        if self.n < 1:
            raise ValueError(f"MaskCutConfig {self.name!r}: n must be >= 1, got {self.n}")
        if not 0.0 <= self.seed_tie_rtol < 1.0:
            raise ValueError(f"MaskCutConfig {self.name!r}: seed_tie_rtol must be in [0, 1), got {self.seed_tie_rtol}")
        if self.crf_backend not in CRF_BACKENDS:
            raise ValueError(
                f"MaskCutConfig {self.name!r}: crf_backend must be one of {CRF_BACKENDS}, got {self.crf_backend!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


# The paper's ensemble, Supp. A.2 (REFERENCE.md section 1 table). The DINOv2 models are the ones WITH 4 registers,
# as the authors' MaskCut loads them (torch.hub dinov2_{g,l}14_reg, code/CutLER/maskcut/maskcut_dinov3.py line 51,
# CLS + 4 registers dropped): registers remove the high-norm artefact tokens that would distort the thresholded
# cosine graph tau = 0.12 was tuned on. DINOv3 ViT-B/16 (LVD-1689M) and DINO ViT-B/8 as in Supp. A.2.
# Order matters for deduplication: an earlier configuration's proposal is kept over a later near-duplicate.
PAPER: tuple[MaskCutConfig, ...] = (
    MaskCutConfig("dinov3_b16", "vit_base_patch16_dinov3.lvd1689m", "v", 768, 0.35, 4, crf=False),
    MaskCutConfig("dinov2_g14", "vit_giant_patch14_reg4_dinov2.lvd142m", "v", 672, 0.12, 3, crf=True),
    MaskCutConfig("dinov2_l14", "vit_large_patch14_reg4_dinov2.lvd142m", "v", 448, 0.12, 3, crf=True),
    MaskCutConfig("dino_b8", "vit_base_patch8_224.dino", "k", 480, 0.15, 3, crf=True),
)

# CutLER's own ImageNet setting (DINO ViT-B/8, keys, 480 px, tau 0.15, N 3, CRF on): the published
# imagenet_train_fixsize480_tau0.15_N3.json (REFERENCE.md section 4).
CUTLER: tuple[MaskCutConfig, ...] = (PAPER[3],)

# Deterministic, weight-free configuration for the synthetic demo and tests (OUR choice, not the paper's):
# 8-pixel patches at 384 px give a 48 x 48 grid. tau = 0.85 suits the unit-vector statistics of
# backbones.ColourTextureExtractor (swept 0.6-0.9 at 256 and 384 px on 64 scenes; docs/discover.md).
SYNTHETIC: tuple[MaskCutConfig, ...] = (
    MaskCutConfig("colour_texture", "colour-texture", "patch", 384, 0.85, 4, crf=True),
)

PRESETS: dict[str, tuple[MaskCutConfig, ...]] = {"paper": PAPER, "cutler": CUTLER, "synthetic": SYNTHETIC}


def preset(name: str) -> tuple[MaskCutConfig, ...]:
    """The configurations of a named preset."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown MaskCut preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
