"""Metrics as pure functions over numpy arrays; metric values are fractions in [0, 1] (not percent).

Conventions shared by all functions:

* ``scores``: float array [N, C], higher = more confident (logits or probabilities).
* ``ranked``: int array [N, K], each row the class indices ranked best first (K >= the k a metric needs).
* ``targets``: bool array [N, C], the label set of each image as a multi-hot row.
* ``labels``: int array [N], one class per image (-1 = no label: the image is skipped).

Images whose label set is empty are excluded from every multi-label metric (ReaL's convention); a metric
with nothing to average over raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

AP_TIE_RULES = ("sklearn", "authors")
# Label-count buckets of every per-bucket metric (map_*_k<group> and the thresholded ones): the authors'
# --bucket_scheme "default" (1, 2, 3, >=4 labels; the paper's Table 2) and "simple" (1, 2, >=3).
# Suffix -> (fewest, most) labels.
LABEL_COUNT_SCHEMES: dict[str, dict[str, tuple[int, int]]] = {
    "default": {"k1": (1, 1), "k2": (2, 2), "k3": (3, 3), "k4plus": (4, 10**9)},
    "simple": {"k1": (1, 1), "k2": (2, 2), "k3plus": (3, 10**9)},
}

_CHUNK_ELEMENTS = 8_000_000  # bound on the temporary [rows, k, C] comparison array


def check_choice(name: str, value: str, allowed: Iterable[str]) -> None:
    """A ``ValueError`` naming option ``name`` and its allowed values unless ``value`` is one of them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def label_count_buckets(scheme: str) -> dict[str, tuple[int, int]]:
    """The buckets of :data:`LABEL_COUNT_SCHEMES` ``[scheme]``; a ``ValueError`` for an unknown scheme."""
    check_choice("bucket_scheme", scheme, LABEL_COUNT_SCHEMES)
    return LABEL_COUNT_SCHEMES[scheme]


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores of each row, best first ([N, k]); among equal scores the lower class
    index ranks first (as a stable descending sort would give)."""
    n, c = scores.shape
    k = min(k, c)
    if k == c:
        return np.argsort(-scores, axis=1, kind="stable")
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part.sort(axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    ranked = np.take_along_axis(part, order, axis=1)
    # Rows where the k-th score is tied with a class left out: the partition chose arbitrarily, so redo them.
    kth = np.take_along_axis(scores, ranked[:, -1:], axis=1)
    tied = np.flatnonzero((scores >= kth).sum(axis=1) > k)
    if len(tied):
        ranked[tied] = np.argsort(-scores[tied], axis=1, kind="stable")[:, :k]
    return ranked


def _nonempty(targets: np.ndarray) -> np.ndarray:
    keep = targets.any(axis=1)
    if not keep.any():
        raise ValueError("no image has a non-empty label set")
    return keep


def _hits(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[N, K] bool: whether the class at each rank is in the image's label set."""
    return np.take_along_axis(targets, ranked, axis=1)


def _need_ranks(ranked: np.ndarray, k: int) -> None:
    if ranked.shape[1] < k:
        raise ValueError(f"this metric needs the top-{k} classes of each image, got only {ranked.shape[1]}")


def top_k_accuracy(ranked: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Single-label top-k accuracy: the label is among the first ``k`` ranked classes (images with label -1 skipped)."""
    _need_ranks(ranked, k)
    keep = labels >= 0
    if not keep.any():
        raise ValueError("no image has a label")
    return float((ranked[keep, :k] == labels[keep, None]).any(axis=1).mean())


def multilabel_top_k_accuracy(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """ReaL-style top-k: at least one of the first ``k`` ranked classes is in the label set; sample average.

    With k = 1 this is ReaL accuracy (Beyer et al. 2020): the argmax is one of the image's labels.
    """
    _need_ranks(ranked, k)
    keep = _nonempty(targets)
    return float(_hits(ranked[keep, :k], targets[keep]).any(axis=1).mean())


def variable_top_k_correct(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-image variable top-k correctness (Anzaku et al.), for images with a non-empty label set.

    k_i = |Y_i|, the image's number of valid labels; image i is correct iff its k_i highest-ranked classes are
    exactly its label set (equivalently: every label is within the top k_i). Returns a bool array over the
    non-empty images, in order.
    """
    keep = _nonempty(targets)
    ranked, targets = ranked[keep], targets[keep]
    k = targets.sum(axis=1)
    _need_ranks(ranked, int(k.max()))
    hits = np.cumsum(_hits(ranked[:, : int(k.max())], targets), axis=1)
    return hits[np.arange(len(k)), k - 1] == k


def variable_top_k_accuracy(ranked: np.ndarray, targets: np.ndarray) -> float:
    """Anzaku et al.'s variable top-k accuracy: mean of :func:`variable_top_k_correct` over images."""
    return float(variable_top_k_correct(ranked, targets).mean())


def r_precision(ranked: np.ndarray, targets: np.ndarray) -> float:
    """R-precision: the fraction of an image's k = |Y_i| labels found among its k highest-ranked classes,
    averaged over images with a non-empty label set (partial credit, unlike variable top-k accuracy)."""
    keep = _nonempty(targets)
    ranked, targets = ranked[keep], targets[keep]
    k = targets.sum(axis=1)
    _need_ranks(ranked, int(k.max()))
    hits = np.cumsum(_hits(ranked[:, : int(k.max())], targets), axis=1)
    return float((hits[np.arange(len(k)), k - 1] / k).mean())


def variable_top_k_by_label_count(ranked: np.ndarray, targets: np.ndarray) -> dict[int, float]:
    """Variable top-k accuracy within each subgroup of images that have exactly k labels, keyed by k."""
    correct = variable_top_k_correct(ranked, targets)
    counts = targets[targets.any(axis=1)].sum(axis=1)
    return {int(k): float(correct[counts == k].mean()) for k in np.unique(counts)}


def asma(ranked: np.ndarray, targets: np.ndarray) -> float:
    """Aggregate Subgroup Model Accuracy, our reading of Anzaku et al.

    Images are grouped by their number of labels k (one subgroup per k present, no merging); within each
    subgroup the variable top-k accuracy is computed; ASMA is the unweighted mean of the subgroup accuracies, so
    that multi-label images weigh as much as the (far more numerous) single-label ones.
    """
    return float(np.mean(list(variable_top_k_by_label_count(ranked, targets).values())))


def per_sample_average_precision(scores: np.ndarray, targets: np.ndarray, ties: str = "sklearn") -> np.ndarray:
    """Average precision of each image's ranking of all C classes, for images with a non-empty label set.

    ``ties="sklearn"``: for label j, precision = |{true c: s_c >= s_j}| / |{c: s_c >= s_j}|, so classes tied
    with a label count against it (scikit-learn's ``label_ranking_average_precision_score``). ``"authors"``:
    precision at each label's position in ``np.argsort(s)[::-1]`` (the authors' ``compute_average_precision``;
    among tied scores the order is whatever numpy's sort leaves). Without ties both agree. AP_i = mean over labels.
    """
    check_choice("ties", ties, AP_TIE_RULES)
    keep = _nonempty(targets)
    scores, targets = scores[keep], targets[keep]
    counts = targets.sum(axis=1)
    out = np.empty(len(counts), dtype=np.float64)
    tied = np.zeros(len(counts), dtype=bool)
    for k in np.unique(counts):
        rows = np.flatnonzero(counts == k)
        cols = np.nonzero(targets[rows])[1].reshape(len(rows), k)  # the k labels of each row
        step = max(1, _CHUNK_ELEMENTS // (k * scores.shape[1]))
        for start in range(0, len(rows), step):
            r = rows[start : start + step]
            s = scores[r]
            true_s = np.take_along_axis(s, cols[start : start + step], axis=1)  # [n, k]
            rank = (s[:, None, :] >= true_s[:, :, None]).sum(axis=2)
            above = (true_s[:, None, :] >= true_s[:, :, None]).sum(axis=2)
            if ties == "sklearn":
                out[r] = (above / rank).mean(axis=1)
                continue
            # Labels tied only among themselves take consecutive places after the classes strictly above, in
            # whichever order: precision (labels above + i) / (classes above + i) for i = 1, 2, ..., given here in
            # class order. Only a label tied with a class that is not a label needs the sort.
            rank_above = (s[:, None, :] > true_s[:, :, None]).sum(axis=2)
            equal = true_s[:, None, :] == true_s[:, :, None]  # [n, k, k]
            tied_labels = equal.sum(axis=2)  # the label itself included
            tied[r] = (rank - rank_above > tied_labels).any(axis=1)
            place = np.tril(equal).sum(axis=2)  # 1 + the tied labels of lower class index
            out[r] = ((above - tied_labels + place) / (rank_above + place)).mean(axis=1)
    rows = np.flatnonzero(tied)
    step = max(1, _CHUNK_ELEMENTS // scores.shape[1])
    for start in range(0, len(rows), step):  # only images with a label tied to a class that is not a label
        r = rows[start : start + step]
        hits = np.take_along_axis(targets[r], np.argsort(scores[r], axis=1)[:, ::-1], axis=1)
        precision = np.cumsum(hits, axis=1) / np.arange(1, scores.shape[1] + 1)
        out[r] = (precision * hits).sum(axis=1) / counts[r]
    return out


def mean_per_sample_average_precision(scores: np.ndarray, targets: np.ndarray, ties: str = "sklearn") -> float:
    """The paper's "mAP" on ReaL / INv2-ML / IN-Seg: per-sample AP averaged over images (sklearn ties: LRAP)."""
    return float(per_sample_average_precision(scores, targets, ties).mean())


def sorted_columns(scores: np.ndarray) -> np.ndarray:
    """The class columns of ``scores``, each sorted ascending ([C, N], a copy): what per-class AP and the
    F1-optimal and count-calibrated thresholds search; compute it once to share it among them."""
    columns = np.array(scores.T, order="C")
    columns.sort(axis=1)
    return columns


def _positive_counts(
    scores: np.ndarray, targets: np.ndarray, columns: np.ndarray
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each class with positives: its positives' scores s_j, |{positives: s >= s_j}| and |{images: s >= s_j}|.

    ``columns``: :func:`sorted_columns` of the rows counted as images (those with a non-empty label set; the
    other rows of ``scores`` and ``targets`` hold no positive, so they need not be sliced off). The counts come
    from binary search, ties counted together.
    """
    n = columns.shape[1]
    class_of, image_of = np.nonzero(np.ascontiguousarray(targets.T))
    bounds = np.searchsorted(class_of, np.arange(scores.shape[1] + 1))
    out = {}
    for c in np.flatnonzero(np.diff(bounds)):
        s = scores[image_of[bounds[c] : bounds[c + 1]], c]
        positives_above = len(s) - np.searchsorted(np.sort(s), s, side="left")
        images_above = n - np.searchsorted(columns[c], s, side="left")
        out[int(c)] = (s, positives_above, images_above)
    return out


def _nonempty_columns(scores: np.ndarray, targets: np.ndarray, columns: np.ndarray | None) -> np.ndarray:
    """``columns`` if given, else :func:`sorted_columns` of the rows of ``scores`` with a non-empty label set."""
    keep = _nonempty(targets)
    if columns is not None:
        return columns
    return sorted_columns(scores if keep.all() else scores[keep])


def per_class_average_precision(
    scores: np.ndarray, targets: np.ndarray, *, columns: np.ndarray | None = None
) -> np.ndarray:
    """Non-interpolated AP of each class over the images with a non-empty label set ([C], NaN for classes without
    a positive); images without labels (ReaL's 3,163, say) are unannotated, not negatives of every class.

    AP_c = mean over positives j of |{positives: s >= s_j}| / |{images: s >= s_j}|: precision at each positive's
    score threshold, tied scores entering together; equals ``sklearn.metrics.average_precision_score``.
    ``columns``: :func:`sorted_columns` of those images' scores, if the caller has it already.
    """
    columns = _nonempty_columns(scores, targets, columns)
    out = np.full(scores.shape[1], np.nan)
    for c, (_, positives_above, images_above) in _positive_counts(scores, targets, columns).items():
        out[c] = np.mean(positives_above / images_above)
    return out


def macro_average_precision(scores: np.ndarray, targets: np.ndarray, *, columns: np.ndarray | None = None) -> float:
    """Classic (COCO/VOC) mAP: per-class AP averaged over the classes that have at least one positive
    (``columns`` as in :func:`per_class_average_precision`)."""
    ap = per_class_average_precision(scores, targets, columns=columns)
    if np.isnan(ap).all():
        raise ValueError("no class has a positive image")
    return float(np.nanmean(ap))


def per_class_averaged_accuracy(correct: np.ndarray, classes: np.ndarray) -> float:
    """Accuracy computed within each class, then averaged over the classes present (Shankar et al. / TFDS).

    ``correct``: bool [N]; ``classes``: int [N], the class each image is grouped under (its original label).
    """
    present, inverse = np.unique(classes, return_inverse=True)
    per_class = np.bincount(inverse, weights=correct.astype(np.float64)) / np.bincount(inverse)
    return float(per_class.mean()) if len(present) else float("nan")


def f1_optimal_thresholds(scores: np.ndarray, targets: np.ndarray, *, columns: np.ndarray | None = None) -> np.ndarray:
    """Per-class threshold maximising that class's F1 on (scores, targets): predict class c iff s_c >= t_c.

    Images with an empty label set are excluded. The optimum lies at a positive's score, where
    F1 = 2 |{positives: s >= t}| / (|{images: s >= t}| + P). A class without positives gets +inf (never
    predicted). Calibrating on the evaluation set itself makes these oracle thresholds: an optimistic bound.
    ``columns``: :func:`sorted_columns` of the scores of the images with a non-empty label set, if at hand.
    """
    columns = _nonempty_columns(scores, targets, columns)
    out = np.full(scores.shape[1], np.inf)
    for c, (s, positives_above, images_above) in _positive_counts(scores, targets, columns).items():
        out[c] = s[np.argmax(positives_above / (images_above + len(s)))]
    return out
