"""Multi-hot predictions from scores by a threshold rule, and the set metrics computed on them.

Follows the authors' ``code/deit/evaluation.py``: scores that are logits go through the sigmoid; thresholds are
fixed (``thresh@0.5``) or calibrated per class to a label count (``thresh@original``, ``thresh@val``); an image
with no class at or above its threshold gets its argmax; metrics are named as the authors name them. Values are
fractions in [0, 1]. Array conventions as in :mod:`multilabel_imagenet.evaluation.metrics`.
"""

from __future__ import annotations

import numpy as np

from multilabel_imagenet.evaluation import metrics

SIGMOID_MODES = ("auto", "always", "never")


def probabilities(scores: np.ndarray, sigmoid: str = "auto") -> tuple[np.ndarray, bool]:
    """The scores thresholds apply to, and whether the sigmoid was applied to get them.

    ``"auto"``: the sigmoid when some score lies outside [0, 1] (logits), else the scores as given
    (probabilities); ``"always"``: the authors' rule (their scores are logits); ``"never"``: as given.
    """
    metrics.check_choice("sigmoid", sigmoid, SIGMOID_MODES)
    if sigmoid == "never" or (sigmoid == "auto" and scores.min() >= 0.0 and scores.max() <= 1.0):
        return scores, False
    with np.errstate(over="ignore"):  # exp overflow -> probability 0, as in the authors' float32 arithmetic
        return 1.0 / (1.0 + np.exp(-scores)), True


def count_calibrated_thresholds(probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-class thresholds predicting class c on ``counts[c]`` of the rows of ``probs`` (the authors'
    ``calibrate_thresholds_by_count``): the counts[c]-th highest score of column c (rows tied with it are
    predicted too), the lowest score when counts[c] >= the number of rows, and +inf (never predicted) when
    counts[c] == 0 (the authors use 1.0, which a saturated float32 sigmoid reaches).
    """
    n = probs.shape[0]
    if n == 0:
        raise ValueError("no rows to calibrate thresholds on")
    out = np.full(probs.shape[1], np.inf)
    has = np.flatnonzero(counts > 0)
    columns = probs.T[has]  # [classes with a count, N], a copy (C-ordered), so each row is partitioned in place
    for c, column, k in zip(has, columns, n - np.minimum(counts[has], n), strict=True):
        column.partition(k)
        out[c] = column[k]  # the k-th lowest = the counts[c]-th highest
    return out


def sorted_count_thresholds(columns: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`count_calibrated_thresholds` read off ``columns`` = ``metrics.sorted_columns(probs)`` (each class
    column sorted ascending) instead of partitioning every column again: t_c = ``columns[c, N - counts[c]]``, the
    lowest score when counts[c] >= N, +inf when counts[c] == 0; the same values."""
    n = columns.shape[1]
    if n == 0:
        raise ValueError("no rows to calibrate thresholds on")
    out = np.full(columns.shape[0], np.inf)
    has = np.flatnonzero(counts > 0)
    out[has] = columns[has, n - np.minimum(counts[has], n)]
    return out


def predict(probs: np.ndarray, thresholds: np.ndarray, argmax_fallback: bool = True) -> np.ndarray:
    """Predict every class with ``probs >= thresholds[c]``; with ``argmax_fallback`` (the authors' default), an
    image with nothing predicted gets its highest-scored class (the lowest index among ties)."""
    predicted = probs >= thresholds[None, :]
    if argmax_fallback:
        empty = np.flatnonzero(~predicted.any(axis=1))
        predicted[empty, np.argmax(probs[empty], axis=1)] = True
    return predicted


def _div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def set_metrics(predicted: np.ndarray, targets: np.ndarray, bucket_scheme: str = "default") -> dict[str, float]:
    """The authors' ``compute_multilabel_metrics`` on multi-hot predictions, over images with a non-empty label set.

    Overall: ``subset_accuracy`` (predicted set == label set), ``mean_iou`` (|P & Y| / |P | Y| averaged over
    images), ``micro_precision`` / ``micro_recall`` / ``micro_f1`` (counts pooled over all (image, class) pairs;
    0 when a denominator is 0), and ``macro_{precision,recall,f1}_over_gt_classes`` (per class, averaged over the
    classes with >= 1 label; a class never predicted has precision 0). Then, per label-count bucket of
    ``bucket_scheme`` (suffix ``_k1`` ...): ``subset_accuracy``, ``mean_iou`` and the micro P/R/F1.
    """
    keep = metrics._nonempty(targets)
    if not keep.all():
        predicted, targets = predicted[keep], targets[keep]
    both = predicted & targets
    tp = np.count_nonzero(both, axis=1)
    n_pred = np.count_nonzero(predicted, axis=1)
    n_true = np.count_nonzero(targets, axis=1)
    exact = (tp == n_true) & (n_pred == n_true)
    iou = tp / (n_pred + n_true - tp)  # the union holds the labels, so it is never empty
    out: dict[str, float] = {}

    def pooled(rows: np.ndarray | slice, suffix: str) -> None:
        p = _div(tp[rows].sum(), n_pred[rows].sum())
        r = _div(tp[rows].sum(), n_true[rows].sum())
        out[f"subset_accuracy{suffix}"] = float(exact[rows].mean())
        out[f"mean_iou{suffix}"] = float(iou[rows].mean())
        out[f"micro_precision{suffix}"] = p
        out[f"micro_recall{suffix}"] = r
        out[f"micro_f1{suffix}"] = _div(2 * p * r, p + r)

    pooled(slice(None), "")
    class_tp = np.count_nonzero(both, axis=0).astype(np.float64)
    class_pred = np.count_nonzero(predicted, axis=0)
    class_true = np.count_nonzero(targets, axis=0)
    has = class_true > 0
    p = np.divide(class_tp, class_pred, out=np.zeros_like(class_tp), where=class_pred > 0)[has]
    r = class_tp[has] / class_true[has]
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=p + r > 0)
    out["macro_precision_over_gt_classes"] = float(p.mean())
    out["macro_recall_over_gt_classes"] = float(r.mean())
    out["macro_f1_over_gt_classes"] = float(f1.mean())
    for suffix, (lo, hi) in metrics.label_count_buckets(bucket_scheme).items():
        rows = (n_true >= lo) & (n_true <= hi)
        if rows.any():
            pooled(rows, f"_{suffix}")
    return out
