"""Metric functions against independent references (scikit-learn, brute-force loops)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    label_ranking_average_precision_score,
    top_k_accuracy_score,
)

from multilabel_imagenet.evaluation import metrics


def _random_case(seed: int, n: int = 300, c: int = 40, max_labels: int = 5, empty: float = 0.1):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, c))
    targets = np.zeros((n, c), dtype=bool)
    for i in range(n):
        if rng.random() < empty:
            continue
        k = rng.integers(1, max_labels + 1)
        targets[i, rng.choice(c, size=k, replace=False)] = True
    return scores, targets


@pytest.mark.parametrize("seed", [0, 1])
def test_per_sample_ap_equals_sklearn_lrap(seed):
    scores, targets = _random_case(seed)
    keep = targets.any(axis=1)
    expected = label_ranking_average_precision_score(targets[keep], scores[keep])
    assert metrics.mean_per_sample_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)


def test_per_sample_ap_with_ties_equals_sklearn_lrap():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(200, 30)).astype(np.float32)  # many ties
    targets = rng.random((200, 30)) < 0.1
    targets[:, 0] |= ~targets.any(axis=1)
    expected = label_ranking_average_precision_score(targets, scores)
    assert metrics.mean_per_sample_average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("integer_scores", [False, True])
def test_macro_ap_equals_sklearn_over_classes_with_positives(integer_scores):
    scores, targets = _random_case(4, n=500, c=60, max_labels=3)
    if integer_scores:
        scores = np.round(scores * 2)  # ties
    targets[:, :7] = False  # classes without positives must be excluded, not counted as 0
    with_pos = targets.any(axis=0)
    keep = targets.any(axis=1)  # images without labels are excluded, not negatives of every class
    expected = [average_precision_score(targets[keep, j], scores[keep, j]) for j in np.flatnonzero(with_pos)]
    per_class = metrics.per_class_average_precision(scores, targets)
    assert np.isnan(per_class[~with_pos]).all()
    np.testing.assert_allclose(per_class[with_pos], expected, atol=1e-12)
    assert metrics.macro_average_precision(scores, targets) == pytest.approx(np.mean(expected), abs=1e-12)


def test_macro_ap_is_unchanged_by_appending_images_without_labels():
    scores, targets = _random_case(9, n=200, c=20, max_labels=3, empty=0.0)
    before = metrics.macro_average_precision(scores, targets)
    rng = np.random.default_rng(10)
    extra = rng.normal(size=(50, 20)) + 3.0  # high-scored unlabelled images would lower AP if counted as negatives
    padded_scores = np.concatenate([scores, extra])
    padded_targets = np.concatenate([targets, np.zeros((50, 20), dtype=bool)])
    assert metrics.macro_average_precision(padded_scores, padded_targets) == pytest.approx(before, abs=1e-15)
    assert metrics.mean_per_sample_average_precision(padded_scores, padded_targets) == pytest.approx(
        metrics.mean_per_sample_average_precision(scores, targets), abs=1e-15
    )


def test_top_k_indices_and_single_label_accuracy_match_sklearn():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(400, 50))
    labels = rng.integers(0, 50, size=400)
    ranked = metrics.top_k_indices(scores, 5)
    np.testing.assert_array_equal(ranked, np.argsort(-scores, axis=1)[:, :5])
    tied = np.round(scores, 1)  # ties, also at the k-th place: lower class index first, deterministically
    np.testing.assert_array_equal(metrics.top_k_indices(tied, 5), np.argsort(-tied, axis=1, kind="stable")[:, :5])
    for k in (1, 5):
        assert metrics.top_k_accuracy(ranked, labels, k) == pytest.approx(
            top_k_accuracy_score(labels, scores, k=k, labels=np.arange(50))
        )
    labels[:100] = -1  # unlabelled images are skipped
    assert metrics.top_k_accuracy(ranked, labels, 1) == pytest.approx(np.mean(ranked[100:, 0] == labels[100:]))
    with pytest.raises(ValueError, match="top-6"):
        metrics.top_k_accuracy(ranked, labels, 6)


def test_multilabel_top_k_and_variable_top_k_against_loops():
    scores, targets = _random_case(6)
    ranked = metrics.top_k_indices(scores, 12)
    rows = [i for i in range(len(targets)) if targets[i].any()]
    for k in (1, 5):
        loop = np.mean([any(targets[i, c] for c in ranked[i, :k]) for i in rows])
        assert metrics.multilabel_top_k_accuracy(ranked, targets, k) == pytest.approx(loop)
    exact = [set(ranked[i, : targets[i].sum()]) == set(np.flatnonzero(targets[i])) for i in rows]
    assert metrics.variable_top_k_accuracy(ranked, targets) == pytest.approx(np.mean(exact))
    by_k = metrics.variable_top_k_by_label_count(ranked, targets)
    counts = targets[rows].sum(axis=1)
    assert sorted(by_k) == sorted(set(counts.tolist()))
    for k, acc in by_k.items():
        assert acc == pytest.approx(np.mean(np.array(exact)[counts == k]))
    assert metrics.asma(ranked, targets) == pytest.approx(np.mean(list(by_k.values())))
    found = [len(set(ranked[i, : targets[i].sum()]) & set(np.flatnonzero(targets[i]))) / targets[i].sum() for i in rows]
    assert metrics.r_precision(ranked, targets) == pytest.approx(np.mean(found))


def test_variable_top_k_small_hand_case():
    # image 0: labels {0, 1}, top-2 = {1, 0} -> correct; image 1: labels {2, 3}, top-2 = {2, 0} -> wrong;
    # image 2: label {3}, top-1 = 3 -> correct. Subgroups: k=1 -> 1.0, k=2 -> 0.5; ASMA 0.75, plain 2/3.
    scores = np.array([[0.8, 0.9, 0.1, 0.0], [0.5, 0.1, 0.9, 0.4], [0.1, 0.2, 0.3, 0.9]])
    targets = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    ranked = metrics.top_k_indices(scores, 4)
    assert metrics.variable_top_k_accuracy(ranked, targets) == pytest.approx(2 / 3)
    assert metrics.variable_top_k_by_label_count(ranked, targets) == {1: 1.0, 2: 0.5}
    assert metrics.asma(ranked, targets) == pytest.approx(0.75)
    assert metrics.r_precision(ranked, targets) == pytest.approx((1 + 0.5 + 1) / 3)


def test_f1_optimal_thresholds_are_optimal_per_class():
    scores, targets = _random_case(8, n=200, c=15, max_labels=3, empty=0.0)
    scores = np.round(scores, 1)  # ties: a threshold can only cut between distinct scores
    thresholds = metrics.f1_optimal_thresholds(scores, targets)
    for j in range(scores.shape[1]):
        if not targets[:, j].any():
            assert thresholds[j] == np.inf
            continue
        best = max(f1_score(targets[:, j], scores[:, j] >= t) for t in np.unique(scores[:, j]))
        assert f1_score(targets[:, j], scores[:, j] >= thresholds[j]) == pytest.approx(best)


def test_per_class_averaged_accuracy():
    correct = np.array([1, 0, 1, 1, 1], dtype=bool)
    classes = np.array([0, 0, 1, 1, 1])
    assert metrics.per_class_averaged_accuracy(correct, classes) == pytest.approx((0.5 + 1.0) / 2)


def test_all_empty_label_sets_raise():
    with pytest.raises(ValueError, match="non-empty"):
        metrics.mean_per_sample_average_precision(np.zeros((2, 3)), np.zeros((2, 3), dtype=bool))
