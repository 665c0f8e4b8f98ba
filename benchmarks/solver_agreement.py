"""Agreement of MaskCut's masks from the fast solver with the exact (published, float64) one, per seed rule.

The seed of each cut is the eigenvector's largest entry. ``MaskCutConfig.seed_tie_rtol`` chooses how it is taken:
0 (the default) is numpy's exact argmax, as CutLER's maskcut.py does; 1e-4 (``maskcut.SEED_TIE_RTOL``) takes the
first patch within that fraction of the maximum. With the exact argmax, the build's fast path solves again with
the exact solver the graphs whose fast x cannot fix the seed (``maskcut.seed_decided``). For every map this
runs ``maskcut.maskcut_patches`` with the exact solver and with the fast one under each rule and compares the
final (disjoint) patch masks:

* ``exact_argmax``: the default, as the build runs it (fast, undecided graphs solved again exactly);
* ``exact_argmax_fast_only``: the exact argmax on the fast solver's x alone (no second solve);
* ``tie_rtol_1e-4``: the earlier tie-tolerant seed, on both solvers;
* ``published_vs_tie_rtol``: the exact solver under the two rules (how often 1e-4 departs from the published
  argmax on the same x).

Sets of maps (``multilabel_imagenet.builder.synthetic``): ``varied``, the 50 maps of
tests/test_maskcut.py::test_fast_and_exact_solvers_agree_on_50_feature_maps (``blob_features``: 38 on 32 x 32 with
N = 2, 8 on 48 x 48 and 4 on 60 x 60 with N = 1; d = 32, tau = 0.15); ``twins`` (``twin_features``: two disjoint
discs with identical features) and ``tiny`` (``tiny_features``: only objects of 1-13 patches), 12 maps each at
noise 0, 0.3 and 0.8 on 24 x 24 with N = 3. The last two are where the seed is tied or nearly so.

    python benchmarks/solver_agreement.py [--limit K] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import machine
import numpy as np
import scipy
import torch

from multilabel_imagenet.builder import maskcut, ncut, synthetic
from multilabel_imagenet.builder.crf import mask_iou

TAU = 0.15
VARIED_PLAN = ((32, 38, 2), (48, 8, 1), (60, 4, 1))  # (grid, maps, iterations), as in the test
TIE_GRID, TIE_NOISES, TIE_SEEDS, TIE_N = 24, (0.0, 0.3, 0.8), 12, 3


def map_sets(limit: int | None) -> dict[str, list[tuple[torch.Tensor, int]]]:
    """Per set, batches of (features (B, T, d) on one grid, N); at most ``limit`` maps per set."""
    varied = [
        (torch.stack([synthetic.blob_features(g, g, 32, seed=1000 * g + s) for s in range(count)]), n)
        for g, count, n in VARIED_PLAN
    ]
    ties = {
        name: [
            (
                torch.stack(
                    [gen(TIE_GRID, TIE_GRID, 32, seed, noise) for noise in TIE_NOISES for seed in range(TIE_SEEDS)]
                ),
                TIE_N,
            )
        ]
        for name, gen in (("twins", synthetic.twin_features), ("tiny", synthetic.tiny_features))
    }
    sets = {"varied": varied, **ties}
    if limit is not None:
        for name, batches in sets.items():
            kept, left = [], limit
            for f, n in batches:
                if left > 0:
                    kept.append((f[:left], n))
                    left -= len(kept[-1][0])
            sets[name] = kept
    return sets


def final_masks(f: torch.Tensor, n: int, solver: ncut.Solver, **kwargs) -> list[list[np.ndarray]]:
    grid = int(round(f.shape[1] ** 0.5))
    return [maskcut.disjoint(m) for m in maskcut.maskcut_patches(f, (grid, grid), TAU, n, solver, **kwargs)]


def compare(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> dict:
    ious, identical = [], 0
    for ma, mb in zip(a, b, strict=True):
        identical += all(np.array_equal(x, y) for x, y in zip(ma, mb, strict=True))
        ious += [mask_iou(x, y) for x, y in zip(ma, mb, strict=True) if x.any() or y.any()]
    return {
        "maps": len(a),
        "maps_identical": identical,
        "masks": len(ious),
        "mean_iou": float(np.mean(ious)) if ious else 1.0,
        "min_iou": float(np.min(ious)) if ious else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="at most this many maps per set (a quick check)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("solver_agreement.json"))
    args = parser.parse_args()

    resolved = [0]

    def counted_exact(a: torch.Tensor) -> list:
        resolved[0] += a.shape[0]
        return ncut.ncut_exact(a)

    results: dict[str, dict] = {}
    seconds = {"exact": 0.0, "fast": 0.0}
    for name, batches in map_sets(args.limit).items():
        got: dict[str, list] = {k: [] for k in ("exact", "exact_tol", "fast", "fast_only", "fast_tol")}
        resolved[0] = 0
        for f, n in batches:
            t0 = time.perf_counter()
            got["exact"] += final_masks(f, n, ncut.ncut_exact)
            got["exact_tol"] += final_masks(f, n, ncut.ncut_exact, tie_rtol=maskcut.SEED_TIE_RTOL)
            t1 = time.perf_counter()
            got["fast"] += final_masks(f, n, ncut.ncut_fast, undecided=counted_exact)
            got["fast_only"] += final_masks(f, n, ncut.ncut_fast)
            got["fast_tol"] += final_masks(f, n, ncut.ncut_fast, tie_rtol=maskcut.SEED_TIE_RTOL)
            seconds["exact"] += t1 - t0
            seconds["fast"] += time.perf_counter() - t1
        results[name] = {
            "exact_argmax": compare(got["exact"], got["fast"]) | {"graphs_solved_again": resolved[0]},
            "exact_argmax_fast_only": compare(got["exact"], got["fast_only"]),
            "tie_rtol_1e-4": compare(got["exact_tol"], got["fast_tol"]),
            "published_vs_tie_rtol": compare(got["exact"], got["exact_tol"]),
        }
        print(name, json.dumps(results[name]))
    report = {
        "machine": machine.describe(),
        "versions": {"scipy": scipy.__version__, "numpy": np.__version__},
        "tau": TAU,
        "limit": args.limit,
        "seed_tie_rtol": maskcut.SEED_TIE_RTOL,
        "sets": results,
        "seconds": seconds,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
