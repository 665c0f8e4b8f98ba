"""How much bf16 autocast changes MaskCut's graph and masks against float32, on the paper's real architectures.

For each MaskCut configuration of a preset (default ``paper``: DINOv3 ViT-B/16 at 768 px, DINOv2-reg4 ViT-g/14
at 672, ViT-L/14 at 448, DINO ViT-B/8 at 480) this builds the timm architecture with RANDOM weights
(``pretrained=False``; no weights are downloaded), extracts the configuration's features of a few photographs
(scikit-image's bundled colour photographs, else synthetic scenes) once in float32 and once under bf16
autocast (``backbones.TimmExtractor``'s ``precision``), and compares:

* the graph: the cosine of the patch features (float32 from either feature set, as ``ncut.affinity`` computes
  it) thresholded at the configuration's tau; ``flip_fraction`` is the fraction of patch pairs (i < j) whose
  binarised affinity differs; with the cosine error |cos_bf16 - cos_fp32| (mean, 99th percentile, max) and the
  fraction of pairs within 0.01 of tau, which with trained weights' density near tau gives their flip rate;
* the masks: ``maskcut.maskcut_patches`` (exact solver, the configuration's N) on either feature set; whether
  the first (first-eigenvector) mask and all N masks are identical, and their IoU.

Random weights are not trained ones: how many cosines sit near tau depends on the weights, the bf16 error per
cosine much less so. timm initialises the DINOv2 and DINOv3 LayerScale at 1e-5, so their random blocks barely
change the tokens; ``--layer-scale 1`` (the default runs both) also sets every LayerScale to 1 so that all
blocks contribute and bf16 rounding accumulates over the whole depth, as in a trained model. DINO ViT-B/8 has no
LayerScale (one run). Runs on the CPU (bf16 autocast there).

    python benchmarks/precision_flips.py [--preset paper] [--configs dinov2_l14,...] [--images 2]
        [--size PX] [--depth K] [--layer-scale init,1] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import machine
import numpy as np
import timm
import torch
import torch.nn.functional as F

from multilabel_imagenet.builder import backbones, configs, maskcut, ncut, synthetic
from multilabel_imagenet.builder.crf import mask_iou

NEAR_TAU = 0.01


def photographs(count: int) -> tuple[str, list[np.ndarray]]:
    """``count`` RGB uint8 images: scikit-image's colour photographs, else the synthetic scenes."""
    try:
        import skimage.data

        names = synthetic.SKIMAGE_PHOTOS[:count]
        return "scikit-image: " + ", ".join(names), [getattr(skimage.data, n)()[..., :3] for n in names]
    except ImportError:
        return "synthetic scenes", [synthetic.make_scene(i).image for i in range(count)]


def set_layer_scale(model: torch.nn.Module, value: str) -> bool:
    """Set every LayerScale gamma to ``value`` ("init" keeps timm's); whether the model has any."""
    gammas = [p for n, p in model.named_parameters() if n.endswith(("ls1.gamma", "ls2.gamma", ".gamma_1", ".gamma_2"))]
    if value != "init":
        with torch.no_grad():
            for g in gammas:
                g.fill_(float(value))
    return bool(gammas)


def upper(cos: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(cos.shape[0], cos.shape[0], 1)
    return cos[rows, cols]


def compare(f32: torch.Tensor, f16: torch.Tensor, config: configs.MaskCutConfig) -> dict:
    """Graph and mask differences of one image's two feature maps (h, w, d)."""
    grid = tuple(f32.shape[:2])
    cos = []
    for f in (f32, f16):
        unit = F.normalize(f.reshape(-1, f.shape[-1]).float(), dim=-1)
        cos.append(upper(unit @ unit.T))
    err = (cos[1] - cos[0]).abs()
    flips = int(((cos[0] > config.tau) != (cos[1] > config.tau)).sum())
    masks = [
        maskcut.disjoint(maskcut.maskcut_patches(f[None], grid, config.tau, config.n, ncut.ncut_exact)[0])
        for f in (f32, f16)
    ]
    ious = [mask_iou(a, b) if a.any() or b.any() else 1.0 for a, b in zip(*masks, strict=True)]
    return {
        "pairs": int(cos[0].numel()),
        "flips": flips,
        "flip_fraction": flips / cos[0].numel(),
        "near_tau_fraction": float(((cos[0] - config.tau).abs() < NEAR_TAU).float().mean()),
        "above_tau_fraction": float((cos[0] > config.tau).float().mean()),
        "cos_error_mean": float(err.mean()),
        "cos_error_p99": float(torch.quantile(err[:: max(1, err.numel() // 1_000_000)], 0.99)),
        "cos_error_max": float(err.max()),
        "first_mask_identical": bool(np.array_equal(masks[0][0], masks[1][0])),
        "masks_identical": all(np.array_equal(a, b) for a, b in zip(*masks, strict=True)),
        "mask_ious": ious,
        "mask_patches_fp32": [int(m.sum()) for m in masks[0]],
        "mask_patches_bf16": [int(m.sum()) for m in masks[1]],
    }


def run(
    config: configs.MaskCutConfig, images: list[np.ndarray], size: int, depth: int | None, scale: str
) -> dict | None:
    """One configuration's comparison; None when ``scale`` is a value and the model has no LayerScale."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 0, "dynamic_img_size": True} | ({"depth": depth} if depth else {})
    model = timm.create_model(config.backbone, pretrained=False, **kwargs).eval()
    has_scale = set_layer_scale(model, scale)
    if not has_scale and scale != "init":
        return None
    batch = backbones.normalise(backbones.resized_batch(images, size))
    feats, seconds = {}, {}
    for precision in backbones.PRECISIONS:
        extractor = backbones.TimmExtractor(model, config.feature, precision)
        t0 = time.perf_counter()
        feats[precision] = torch.cat([extractor(batch[i : i + 1]) for i in range(len(images))])
        seconds[precision] = (time.perf_counter() - t0) / len(images)
    per_image = [compare(feats["fp32"][i], feats["bf16"][i], config) for i in range(len(images))]
    pairs = sum(r["pairs"] for r in per_image)
    return {
        "config": config.name,
        "backbone": config.backbone,
        "feature": config.feature,
        "input_size": size,
        "grid": list(feats["fp32"].shape[1:3]),
        "tau": config.tau,
        "n": config.n,
        "depth": len(model.blocks),
        "layer_scale": scale if has_scale else None,
        "flip_fraction": sum(r["flips"] for r in per_image) / pairs,
        "first_masks_identical": sum(r["first_mask_identical"] for r in per_image),
        "all_masks_identical": sum(r["masks_identical"] for r in per_image),
        "images": len(images),
        "seconds_per_image": seconds,
        "per_image": per_image,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper", help="MaskCut preset (configs.PRESETS)")
    parser.add_argument("--configs", help="comma-separated configuration names (default: every ViT one)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--size", type=int, help="input size for every configuration (default: each one's)")
    parser.add_argument("--depth", type=int, help="blocks per model (default: the architecture's; tests: 1)")
    parser.add_argument("--layer-scale", default="init,1", help="comma-separated: init (timm's) and/or values")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("precision_flips.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    chosen = [c for c in configs.preset(args.preset) if c.backbone != backbones.COLOUR_TEXTURE]
    if args.configs:
        names = args.configs.split(",")
        chosen = [c for c in chosen if c.name in names]
        if len(chosen) != len(names):
            parser.error(f"--configs: not all of {names} are in preset {args.preset!r}")
    source, images = photographs(args.images)
    rows = []
    for config in chosen:
        for scale in args.layer_scale.split(","):
            row = run(config, images, args.size or config.input_size, args.depth, scale)
            if row is None:
                continue  # no LayerScale in this model: the variants are the same run
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_image"}), flush=True)
    report = {
        "machine": machine.describe(),
        "device": "cpu",
        "weights": "random (timm architecture, pretrained=False)",
        "images": source,
        "near_tau": NEAR_TAU,
        "results": rows,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
