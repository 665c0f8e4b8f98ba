"""Which metrics each benchmark reports, computed from scores or ranked top-k lists; values in percent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from multilabel_imagenet.evaluation import metrics, thresholded
from multilabel_imagenet.evaluation.benchmarks import Benchmark, BenchmarkFileError, load_benchmark
from multilabel_imagenet.evaluation.predictions import check_ranked, check_scores, tensor_to_numpy

Result = dict[str, Any]
_NEEDS_SCORES = "needs full score vectors; the predictions are ranked top-k class lists"


@dataclass(frozen=True)
class Options:
    """How thresholded metrics and per-sample AP are computed; see :func:`evaluate`."""

    threshold: float = 0.5
    sigmoid: str = "auto"
    argmax_fallback: bool = True
    ap_ties: str = "sklearn"
    bucket_scheme: str = "default"

    def __post_init__(self) -> None:  # evaluate's options are checked here, before any metric runs
        metrics.check_choice("sigmoid", self.sigmoid, thresholded.SIGMOID_MODES)
        metrics.check_choice("ap_ties", self.ap_ties, metrics.AP_TIE_RULES)
        metrics.check_choice("bucket_scheme", self.bucket_scheme, metrics.LABEL_COUNT_SCHEMES)


def evaluate(
    scores: Any,
    benchmark: str | Benchmark,
    *,
    threshold: float = Options.threshold,
    sigmoid: str = Options.sigmoid,
    argmax_fallback: bool = Options.argmax_fallback,
    ap_ties: str = Options.ap_ties,
    bucket_scheme: str = Options.bucket_scheme,
) -> Result:
    """Score ``scores`` ([N, 1000], in ``benchmark``'s canonical order; numpy array or torch tensor).

    ``benchmark`` is a :class:`Benchmark` or a name loadable without a file (``"real"``). Returns
    ``{"n_images": int, "<metric>": float, ..., "settings": {...}, "skipped": {"<metric>": reason}}`` with
    accuracies, AP, IoU, precision/recall/F1 in percent. The options (the fields of :class:`Options`, which
    checks them: a bad value is a ``ValueError``): ``threshold`` (0.5) of the ``@thresh@<t>`` metrics; ``sigmoid``
    ("auto": applied before thresholding when the scores are logits; "always", as the authors; "never");
    ``argmax_fallback`` (True, the authors'): an image with nothing above threshold is given its argmax;
    ``ap_ties`` ("sklearn", or "authors": their argsort order, on the thresholded scores); ``bucket_scheme``
    ("default": 1, 2, 3, >=4 labels; "simple": 1, 2, >=3).
    """
    opts = Options(threshold, sigmoid, argmax_fallback, ap_ties, bucket_scheme)
    bench = load_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if hasattr(scores, "detach"):  # a torch tensor: float64 stays float64 (1e300 is no overflow)
        scores = tensor_to_numpy(scores, "scores")
    scores = check_scores(np.asarray(scores), len(bench), "scores")
    k = max(5, int(bench.targets.sum(axis=1).max()) if bench.targets is not None else 0)
    return _evaluate(bench, metrics.top_k_indices(scores, k), scores, opts)


def evaluate_ranked(ranked: Any, benchmark: str | Benchmark) -> Result:
    """Score ranked class lists ([N, K] class indices, best first, canonical order): only the metrics that
    need no full scores are computed; the others are listed under ``"skipped"`` with the reason."""
    bench = load_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    ranked = check_ranked(np.asarray(ranked), len(bench), "ranked predictions")
    return _evaluate(bench, ranked, None, None)


def _pct(value: float) -> float:
    return 100.0 * value


def _evaluate(bench: Benchmark, ranked: np.ndarray, scores: np.ndarray | None, opts: Options | None) -> Result:
    """The result of :func:`evaluate` (``scores`` and ``opts`` given) or :func:`evaluate_ranked` (neither)."""
    multilabel: Result = {}
    skipped: dict[str, str] = {}
    settings = _multilabel(bench, ranked, scores, opts, multilabel, skipped) if bench.recipe != "single" else None
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
    if settings is not None:
        out["settings"] = settings
    if skipped:
        out["skipped"] = skipped
    return out


def _multilabel(
    bench: Benchmark,
    ranked: np.ndarray,
    scores: np.ndarray | None,
    opts: Options | None,
    out: Result,
    skipped: dict[str, str],
) -> dict[str, Any] | None:
    """Write the multi-label metrics into ``out`` and the skipped ones into ``skipped``; return the settings the
    score-based metrics were computed with (None without scores)."""
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
        skipped.update({m: _NEEDS_SCORES for m in ("map_per_sample", "map_macro", "thresholded metrics")})
        return None
    assert opts is not None
    probs, sigmoid_applied = thresholded.probabilities(scores, opts.sigmoid)
    # The labelled images' scores and labels, sliced once (not at all when every image has labels): the set metrics
    # count only these; their class columns, sorted once, give thresh@val, thresh@tuned and map_macro.
    labelled_probs, labelled_targets = (probs, targets) if nonempty.all() else (probs[nonempty], targets[nonempty])
    columns = metrics.sorted_columns(labelled_probs)
    per_sample = metrics.per_sample_average_precision(
        probs if opts.ap_ties == "authors" else scores, targets, opts.ap_ties
    )
    out["map_per_sample"] = _pct(float(per_sample.mean()))
    out["map_macro"] = _pct(
        metrics.macro_average_precision(scores, targets, columns=columns if probs is scores else None)
    )
    for group, (lo, hi) in metrics.LABEL_COUNT_SCHEMES[opts.bucket_scheme].items():
        in_group = (counts >= lo) & (counts <= hi)
        if in_group.any():
            out[f"count_{group}"] = int(in_group.sum())
            out[f"map_per_sample_{group}"] = _pct(float(per_sample[in_group[nonempty]].mean()))
            out[f"map_macro_{group}"] = _pct(metrics.macro_average_precision(scores[in_group], targets[in_group]))
    rules = _threshold_rules(bench, probs, targets, columns, opts.threshold, skipped)
    for rule, thresholds in rules.items():
        predicted = thresholded.predict(labelled_probs, thresholds, opts.argmax_fallback)
        for key, value in thresholded.set_metrics(predicted, labelled_targets, opts.bucket_scheme).items():
            out[f"{key}@{rule}"] = _pct(value)
    return {
        "threshold_scores": "sigmoid(scores)" if sigmoid_applied else "scores",
        "threshold_rules": list(rules),
        "argmax_fallback": opts.argmax_fallback,
        "ap_ties": opts.ap_ties,
        "bucket_scheme": opts.bucket_scheme,
    }


def _threshold_rules(
    bench: Benchmark,
    probs: np.ndarray,
    targets: np.ndarray,
    columns: np.ndarray,
    threshold: float,
    skipped: dict[str, str],
) -> dict[str, np.ndarray]:
    """Per-class thresholds of each rule, named as the authors name them (``thresh@tuned`` is ours); ``columns``:
    ``metrics.sorted_columns`` of the rows of ``probs`` with a non-empty label set."""
    n_classes = probs.shape[1]
    rules = {}
    if bench.original is not None and (bench.original >= 0).any():
        labelled = bench.original >= 0  # as many predictions per class as original labels, on those images
        counts = np.bincount(bench.original[labelled], minlength=n_classes)
        rules["thresh@original"] = thresholded.count_calibrated_thresholds(
            probs if labelled.all() else probs[labelled], counts
        )
    else:
        skipped["thresh@original"] = "needs the original labels (--labels imagenet-val=FILE or inv2=FILE)"
    # as many predictions per class as the benchmark's labels, on labelled images
    rules["thresh@val"] = thresholded.sorted_count_thresholds(columns, targets.sum(axis=0))
    rules[f"thresh@{threshold:g}"] = np.full(n_classes, threshold)
    rules["thresh@tuned"] = metrics.f1_optimal_thresholds(probs, targets, columns=columns)
    return rules
