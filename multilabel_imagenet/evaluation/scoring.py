"""Which metrics each benchmark reports, computed from scores or ranked top-k lists; values in percent."""

from __future__ import annotations

from typing import Any

import numpy as np

from multilabel_imagenet.evaluation import metrics
from multilabel_imagenet.evaluation.benchmarks import Benchmark, BenchmarkFileError, load_benchmark
from multilabel_imagenet.evaluation.predictions import check_ranked, check_scores

Result = dict[str, Any]
_NEEDS_SCORES = "needs full score vectors; the predictions are ranked top-k class lists"


def evaluate(scores: Any, benchmark: str | Benchmark, *, threshold: float = 0.5) -> Result:
    """Score ``scores`` ([N, 1000], in ``benchmark``'s canonical order; numpy array or torch tensor).

    ``benchmark`` is a :class:`Benchmark` or a name loadable without a file (``"real"``). Returns
    ``{"n_images": int, "<metric>": float, ..., "skipped": {"<metric>": reason}}`` with accuracies, AP,
    precision/recall/F1 in percent. ``threshold`` is the fixed threshold of the ``@<threshold>`` metrics,
    applied to scores that are probabilities (all in [0, 1]); they are skipped otherwise.
    """
    bench = load_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if hasattr(scores, "detach"):
        scores = scores.detach().float().cpu().numpy()
    scores = check_scores(np.asarray(scores), len(bench), "scores")
    k = max(5, int(bench.targets.sum(axis=1).max()) if bench.targets is not None else 0)
    return _evaluate(bench, metrics.top_k_indices(scores, k), scores, threshold)


def evaluate_ranked(ranked: Any, benchmark: str | Benchmark) -> Result:
    """Score ranked class lists ([N, K] class indices, best first, canonical order): only the metrics that
    need no full scores are computed; the others are listed under ``"skipped"`` with the reason."""
    bench = load_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    ranked = check_ranked(np.asarray(ranked), len(bench), "ranked predictions")
    return _evaluate(bench, ranked, None, None)


def _pct(value: float) -> float:
    return 100.0 * value


def _evaluate(bench: Benchmark, ranked: np.ndarray, scores: np.ndarray | None, threshold: float | None) -> Result:
    multilabel: Result = {}
    skipped: dict[str, str] = {}
    if bench.recipe != "single":
        _multilabel(bench, ranked, scores, threshold, multilabel, skipped)
    out: Result = {"n_images": multilabel.pop("n_images", len(bench))}
    depth = ranked.shape[1]
    if bench.original is not None and (bench.original >= 0).any():
        labelled = int((bench.original >= 0).sum())
        if labelled != out["n_images"]:
            out["n_images_original"] = labelled
        for k in (1, 5):
            if depth >= k:
                out[f"top{k}"] = _pct(metrics.top_k_accuracy(ranked, bench.original, k))
            else:
                skipped[f"top{k}"] = f"needs the top-{k} classes of each image; the predictions hold {depth}"
    if bench.main is not None:
        out["main_top1"] = _pct(metrics.top_k_accuracy(ranked, bench.main, 1))
    out.update(multilabel)
    if skipped:
        out["skipped"] = skipped
    return out


def _multilabel(
    bench: Benchmark,
    ranked: np.ndarray,
    scores: np.ndarray | None,
    threshold: float | None,
    out: Result,
    skipped: dict[str, str],
) -> None:
    assert bench.targets is not None
    targets = bench.targets
    if bench.evaluated is not None:  # scored images fixed by the benchmark (empty accepted set = wrong)
        correct = np.take_along_axis(targets[bench.evaluated], ranked[bench.evaluated, :1], axis=1)[:, 0]
        out["n_images"] = int(bench.evaluated.sum())
        if bench.recipe == "class-averaged":
            if bench.original is None:
                raise BenchmarkFileError(
                    f"{bench.name} averages accuracy per original class, so it needs the original val labels: "
                    "load it with the imagenet-val label file (--labels imagenet-val=FILE)"
                )
            out["multilabel_top1_class_avg"] = _pct(
                metrics.per_class_averaged_accuracy(correct, bench.original[bench.evaluated])
            )
        if bench.recipe == "count":
            out["correct"] = int(correct.sum())
        out["multilabel_top1"] = _pct(float(correct.mean()))
        targets = targets & bench.evaluated[:, None]
    else:
        out["n_images"] = int(targets.any(axis=1).sum())
        out["multilabel_top1"] = _pct(metrics.multilabel_top_k_accuracy(ranked, targets, 1))
    depth = ranked.shape[1]
    if depth >= 5:
        out["multilabel_top5"] = _pct(metrics.multilabel_top_k_accuracy(ranked, targets, 5))
    else:
        skipped["multilabel_top5"] = f"needs the top-5 classes of each image; the predictions hold {depth}"
    nonempty = targets.any(axis=1)
    counts = targets.sum(axis=1)
    if depth >= counts.max():
        out["variable_topk"] = _pct(metrics.variable_top_k_accuracy(ranked, targets))
        out["asma"] = _pct(metrics.asma(ranked, targets))
        out["r_precision"] = _pct(metrics.r_precision(ranked, targets))
        for k, acc in metrics.variable_top_k_by_label_count(ranked, targets).items():
            out[f"variable_topk_k{k}"] = _pct(acc)
    else:
        reason = f"needs the top-{counts.max()} classes (the largest label set); the predictions hold {depth}"
        skipped.update({"variable_topk": reason, "asma": reason, "r_precision": reason})
    if scores is None:
        skipped.update({m: _NEEDS_SCORES for m in ("map_per_sample", "map_macro", "precision/recall/f1")})
        return
    per_sample = metrics.per_sample_average_precision(scores, targets)
    out["map_per_sample"] = _pct(float(per_sample.mean()))
    out["map_macro"] = _pct(metrics.macro_average_precision(scores, targets))
    for group, (lo, hi) in metrics.LABEL_COUNT_GROUPS.items():
        in_group = (counts >= lo) & (counts <= hi)
        if in_group.any():
            out[f"map_per_sample_{group}"] = _pct(float(per_sample[in_group[nonempty]].mean()))
            out[f"map_macro_{group}"] = _pct(metrics.macro_average_precision(scores[in_group], targets[in_group]))
    if threshold is not None:
        if scores.min() >= 0.0 and scores.max() <= 1.0:
            for key, value in metrics.threshold_metrics(scores >= threshold, targets).items():
                out[f"{key}@{threshold:g}"] = _pct(value)
        else:
            skipped[f"precision/recall/f1@{threshold:g}"] = (
                "fixed-threshold metrics need probabilities in [0, 1]; the scores are not (pass softmax or "
                "sigmoid outputs)"
            )
    tuned = metrics.f1_optimal_thresholds(scores, targets)
    for key, value in metrics.threshold_metrics(scores >= tuned[None, :], targets).items():
        out[f"{key}@tuned"] = _pct(value)
