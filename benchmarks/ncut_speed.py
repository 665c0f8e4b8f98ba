"""Normalised-cut speed: the exact published solver vs the batched fast solver, side by side in one run.

Writes JSON (default benchmarks/ncut_speed.json): seconds per image for each solver at a 60 x 60 grid
(3,600 patches, d = 768) on CPU with a batch of 8 feature maps, both with and without building the affinity
matrix from the features, their ratios, and the mean IoU of the first-iteration MaskCut masks of the two
solvers. Feature maps are synthetic (a background vector, 1-4 discs, Gaussian noise), as in the tests.

    python benchmarks/ncut_speed.py [--grid 60] [--dim 768] [--batch 8] [--tau 0.15] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import scipy
import torch

from multilabel_imagenet.builder import maskcut, ncut
from multilabel_imagenet.builder.crf import mask_iou
from multilabel_imagenet.builder.synthetic import blob_features


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=60)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tau", type=float, default=0.15)  # CutLER's DINO ViT-B/8 setting
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("ncut_speed.json"))
    args = parser.parse_args()

    g, b = args.grid, args.batch
    feats = torch.stack([blob_features(g, g, args.dim, seed=s) for s in range(b)])
    ncut.ncut_fast(ncut.affinity(feats[:1, :64], args.tau))  # warm-up (allocators, thread pools)

    aff_fast, t_aff_fast = timed(ncut.affinity, feats, args.tau)
    x_fast, t_fast = timed(ncut.ncut_fast, aff_fast)
    x_exact, t_exact, t_aff_exact = [], 0.0, 0.0
    for i in range(b):  # the published solver handles one image at a time
        a, ta = timed(ncut.affinity, feats[i : i + 1], args.tau)
        (x,), te = timed(ncut.ncut_exact, a)
        x_exact.append(x)
        t_aff_exact += ta
        t_exact += te

    ious = []
    for xe, xf in zip(x_exact, x_fast, strict=True):
        ious.append(mask_iou(maskcut.seed_component(xe, (g, g)), maskcut.seed_component(xf, (g, g))))
    result = {
        "grid": [g, g],
        "patches": g * g,
        "dim": args.dim,
        "batch": b,
        "tau": args.tau,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "scipy": scipy.__version__, "numpy": np.__version__},
        "exact_solver_s_per_image": t_exact / b,
        "fast_solver_s_per_image": t_fast / b,
        "solver_speedup": t_exact / t_fast,
        "exact_with_affinity_s_per_image": (t_exact + t_aff_exact) / b,
        "fast_with_affinity_s_per_image": (t_fast + t_aff_fast) / b,
        "speedup_with_affinity": (t_exact + t_aff_exact) / (t_fast + t_aff_fast),
        "mask_mean_iou": float(np.mean(ious)),
        "mask_min_iou": float(np.min(ious)),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
