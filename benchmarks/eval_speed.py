"""Time scoring 50,000 x 1000 scores on ReaL with every metric; write benchmarks/eval_speed.json.

Usage: python benchmarks/eval_speed.py [--no-sklearn]

Scores are random softmax probabilities with the ReaL labels boosted (so rankings are non-trivial); the label
sets are ReaL's (timm's bundled copy). Each metric is timed alone, then the whole ``evaluate`` call; the
scikit-learn references (LRAP, per-class AP) are timed on the same data for the speed-up ratios and to
confirm the values agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from multilabel_imagenet.evaluation import evaluate, load_benchmark, metrics, thresholded


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-sklearn", action="store_true", help="skip the (slow) scikit-learn references")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_suffix(".json"))
    args = parser.parse_args()

    bench = load_benchmark("real")
    targets = bench.targets
    rng = np.random.default_rng(0)
    logits = rng.normal(size=targets.shape).astype(np.float32) + 2.5 * targets * rng.random(targets.shape)
    scores = np.exp(logits - logits.max(axis=1, keepdims=True))
    scores = (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
    keep = targets.any(axis=1)
    counts = targets.sum(axis=0)

    ranked, t_topk = _timed(lambda: metrics.top_k_indices(scores, 9))
    timings = {"top_k_indices_k9": t_topk}
    for name, fn in {
        "multilabel_top1_top5": lambda: [metrics.multilabel_top_k_accuracy(ranked, targets, k) for k in (1, 5)],
        "variable_topk_and_asma": lambda: (
            metrics.variable_top_k_accuracy(ranked, targets),
            metrics.asma(ranked, targets),
        ),
        "map_per_sample": lambda: metrics.mean_per_sample_average_precision(scores, targets),
        "map_macro": lambda: metrics.macro_average_precision(scores, targets),
        "sigmoid": lambda: thresholded.probabilities(logits, "always"),
        "count_calibrated_thresholds": lambda: thresholded.count_calibrated_thresholds(scores[keep], counts),
        "set_metrics_fixed_with_buckets": lambda: thresholded.set_metrics(
            thresholded.predict(scores, np.full(scores.shape[1], 0.5)), targets
        ),
        "f1_optimal_thresholds": lambda: metrics.f1_optimal_thresholds(scores, targets),
    }.items():
        _, timings[name] = _timed(fn)
    result, timings["evaluate_all_metrics"] = _timed(lambda: evaluate(scores, bench))

    record = {
        "what": "seconds to score 50,000 x 1000 float32 scores against ReaL label sets (46,837 non-empty)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "numpy": np.__version__},
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "n_metric_values": sum(1 for k in result if k not in ("skipped", "settings")),
    }
    if not args.no_sklearn:
        from sklearn.metrics import average_precision_score, label_ranking_average_precision_score

        lrap, t_lrap = _timed(lambda: label_ranking_average_precision_score(targets[keep], scores[keep]))
        cols = np.flatnonzero(targets.any(axis=0))
        ap, t_ap = _timed(lambda: np.mean([average_precision_score(targets[keep, c], scores[keep, c]) for c in cols]))
        record["sklearn_seconds"] = {"label_ranking_average_precision_score": round(t_lrap, 3),
                                     "average_precision_score_per_class": round(t_ap, 3)}  # fmt: skip
        record["speedup_vs_sklearn"] = {
            "map_per_sample": round(t_lrap / timings["map_per_sample"], 1),
            "map_macro": round(t_ap / timings["map_macro"], 1),
        }
        record["max_abs_difference_vs_sklearn_percent"] = {
            "map_per_sample": abs(100 * lrap - result["map_per_sample"]),
            "map_macro": abs(100 * ap - result["map_macro"]),
        }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
