"""Thresholded set metrics, count-calibrated thresholds and the authors' AP tie order, against scikit-learn and
loops written from the definitions; then the report keys of `evaluate` and the CLI options."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import expit
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from multilabel_imagenet.cli import main
from multilabel_imagenet.evaluation import evaluate, metrics, thresholded
from multilabel_imagenet.evaluation.benchmarks import Benchmark
from multilabel_imagenet.evaluation.scoring import Options


def _case(seed: int, n: int = 400, c: int = 30, empty: float = 0.1):
    rng = np.random.default_rng(seed)
    targets = np.zeros((n, c), dtype=bool)
    for i in range(n):
        if rng.random() >= empty:
            targets[i, rng.choice(c, size=min(int(rng.geometric(0.5)), c), replace=False)] = True
    scores = rng.normal(size=(n, c)) + 2.0 * targets
    return scores, targets


def test_probabilities_apply_the_sigmoid_to_logits_only_when_asked():
    logits = np.array([[-3.0, 0.0, 2.5]], dtype=np.float32)
    probs, applied = thresholded.probabilities(logits)
    assert applied and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expit(logits), rtol=1e-6)
    given = np.array([[0.1, 0.9, 0.0]])
    assert thresholded.probabilities(given) == (given, False)
    assert thresholded.probabilities(given, "always")[1] and not thresholded.probabilities(logits, "never")[1]
    with pytest.raises(ValueError, match="sigmoid"):
        thresholded.probabilities(given, "softmax")


def test_count_calibrated_thresholds_follow_the_authors_rule():
    rng = np.random.default_rng(0)
    probs = np.round(rng.random((50, 6)), 1)  # ties at the cut are all predicted
    counts = np.array([0, 1, 5, 49, 50, 80])
    got = thresholded.count_calibrated_thresholds(probs, counts)
    for c, d in enumerate(counts):  # the authors' loop: sort descending, take the d-th, else the last
        column = sorted(probs[:, c], reverse=True)
        expected = np.inf if d == 0 else column[d - 1] if d < len(column) else column[-1]
        assert got[c] == expected
        if d:
            assert (probs[:, c] >= got[c]).sum() >= min(d, 50)


def test_count_thresholds_read_off_the_sorted_columns_equal_the_partitioned_ones():
    rng = np.random.default_rng(4)
    for probs in (np.round(rng.random((50, 7)), 1), rng.random((50, 7)).astype(np.float32), rng.random((1, 7))):
        n = len(probs)
        counts = np.array([0, 1, 5, n - 1, n, n + 30, 2])  # 0 -> inf; >= n -> the lowest score
        got = thresholded.sorted_count_thresholds(metrics.sorted_columns(probs), counts)
        np.testing.assert_array_equal(got, thresholded.count_calibrated_thresholds(probs, counts))
        assert got[0] == np.inf
        np.testing.assert_array_equal(got[[4, 5]], probs[:, [4, 5]].min(axis=0))
    with pytest.raises(ValueError, match="no rows"):
        thresholded.sorted_count_thresholds(np.zeros((3, 0)), np.ones(3, dtype=int))


def test_shared_sorted_columns_give_the_same_tuned_thresholds_and_macro_ap():
    scores, targets = _case(5)
    scores = np.round(scores, 1)  # ties
    columns = metrics.sorted_columns(scores[targets.any(axis=1)])
    np.testing.assert_array_equal(
        metrics.f1_optimal_thresholds(scores, targets, columns=columns), metrics.f1_optimal_thresholds(scores, targets)
    )
    assert metrics.macro_average_precision(scores, targets, columns=columns) == metrics.macro_average_precision(
        scores, targets
    )


def test_predict_gives_an_empty_prediction_its_argmax_only_with_the_fallback():
    probs = np.array([[0.2, 0.4, 0.4], [0.9, 0.1, 0.7]])
    thresholds = np.full(3, 0.5)
    np.testing.assert_array_equal(thresholded.predict(probs, thresholds, False), [[0, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(thresholded.predict(probs, thresholds), [[0, 1, 0], [1, 0, 1]])  # tie: lower


@pytest.mark.parametrize("scheme", ["default", "simple"])
def test_set_metrics_match_sklearn_overall_and_per_bucket(scheme):
    scores, targets = _case(1)
    predicted = thresholded.predict(expit(scores), np.full(scores.shape[1], 0.7))
    got = thresholded.set_metrics(predicted, targets, scheme)
    keep = targets.any(axis=1)
    y, p = targets[keep], predicted[keep]
    has = y.any(axis=0)

    def reference(rows, suffix):
        assert got[f"subset_accuracy{suffix}"] == pytest.approx(accuracy_score(y[rows], p[rows]))
        assert got[f"mean_iou{suffix}"] == pytest.approx(jaccard_score(y[rows], p[rows], average="samples"))
        for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            expected = fn(y[rows], p[rows], average="micro", zero_division=0)
            assert got[f"micro_{name}{suffix}"] == pytest.approx(expected)

    reference(slice(None), "")
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = fn(y[:, has], p[:, has], average="macro", zero_division=0)
        assert got[f"macro_{name}_over_gt_classes"] == pytest.approx(expected)
    counts = y.sum(axis=1)
    buckets = {"default": {"_k1": counts == 1, "_k2": counts == 2, "_k3": counts == 3, "_k4plus": counts >= 4},
               "simple": {"_k1": counts == 1, "_k2": counts == 2, "_k3plus": counts >= 3}}[scheme]  # fmt: skip
    for suffix, rows in buckets.items():
        assert rows.any()
        reference(rows, suffix)
    assert {k for k in got if "_k" in k} == {f"{m}{s}" for s in buckets for m in
                                            ("subset_accuracy", "mean_iou", "micro_precision", "micro_recall",
                                             "micro_f1")}  # fmt: skip


def test_set_metrics_small_hand_case():
    # image 0: labels {0, 1}, predicted {0} -> IoU 1/2; image 1: {2}, predicted {2} -> exact; image 2 unlabelled
    predicted = np.array([[1, 0, 0], [0, 0, 1], [1, 1, 1]], dtype=bool)
    targets = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    got = thresholded.set_metrics(predicted, targets)
    assert got["subset_accuracy"] == 0.5 and got["mean_iou"] == 0.75
    assert (got["micro_precision"], got["micro_recall"]) == (1.0, pytest.approx(2 / 3))
    assert got["macro_recall_over_gt_classes"] == pytest.approx((1 + 0 + 1) / 3)
    assert got["mean_iou_k2"] == 0.5 and got["subset_accuracy_k1"] == 1.0


def _authors_ap(row_scores, row_targets):
    """The authors' per-image AP written out: walk np.argsort(s)[::-1], precision at each label."""
    order = np.argsort(row_scores)[::-1]
    found, precisions = 0, []
    for position, c in enumerate(order):
        if row_targets[c]:
            found += 1
            precisions.append(found / (position + 1))
    return np.mean(precisions)


def test_per_sample_ap_authors_tie_order():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 5, size=(300, 40)).astype(np.float32)  # many ties, among labels too
    targets = rng.random((300, 40)) < 0.08
    targets[:, 0] |= ~targets.any(axis=1)
    scores[:100] = rng.normal(size=(100, 40))  # and rows without ties
    got = metrics.per_sample_average_precision(scores, targets, ties="authors")
    np.testing.assert_allclose(got, [_authors_ap(s, t) for s, t in zip(scores, targets, strict=True)], atol=1e-12)
    sklearn_rule = metrics.per_sample_average_precision(scores, targets)
    np.testing.assert_allclose(got[:100], sklearn_rule[:100], atol=1e-12)  # no ties: both rules agree
    assert not np.allclose(got[100:], sklearn_rule[100:])  # ties: the rules differ
    with pytest.raises(ValueError, match="ties"):
        metrics.per_sample_average_precision(scores, targets, ties="random")


def test_per_sample_ap_authors_ties_among_labels_only():
    # labels {1, 2} tied with each other only, below one other class: the authors' order gives 1/2 and 2/3
    # whichever label comes first; the sklearn rule counts both at 2/3
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.5, 0.5, 0.9, 0.5], [0.2, 0.7, 0.7, 0.7]])
    targets = np.array([[0, 1, 1, 0], [1, 1, 0, 1], [0, 1, 1, 1]], dtype=bool)
    got = metrics.per_sample_average_precision(scores, targets, ties="authors")
    np.testing.assert_allclose(got, [_authors_ap(s, t) for s, t in zip(scores, targets, strict=True)], atol=1e-15)
    assert got[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert metrics.per_sample_average_precision(scores, targets)[0] == pytest.approx(2 / 3)


def _tiny_benchmark():
    """8 images, 1000 classes: 6 labelled (1, 1, 2, 3, 4 labels and 1), 2 without labels."""
    label_sets = [[1], [2], [1, 3], [4, 5, 6], [7, 8, 9, 1], [], [], [2]]
    targets = np.zeros((8, 1000), dtype=bool)
    for i, labels in enumerate(label_sets):
        targets[i, labels] = True
    original = np.array([1, 2, 3, 4, 7, 9, 9, 5])
    ids = tuple(f"ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(8))
    return Benchmark("tiny", ids, "multilabel", "imagenet-val", targets=targets, original=original)


def test_evaluate_reports_the_authors_threshold_rules_and_settings():
    bench = _tiny_benchmark()
    logits = np.random.default_rng(3).normal(size=(8, 1000)).astype(np.float32) - 4.0
    logits[bench.targets] += 5.0
    result = evaluate(logits, bench)
    probs = expit(logits)
    original_t = thresholded.count_calibrated_thresholds(probs, np.bincount(bench.original, minlength=1000))
    val_t = thresholded.count_calibrated_thresholds(probs[[0, 1, 2, 3, 4, 7]], bench.targets.sum(axis=0))
    for rule, t in (("thresh@original", original_t), ("thresh@val", val_t), ("thresh@0.5", np.full(1000, 0.5))):
        expected = thresholded.set_metrics(thresholded.predict(probs, t), bench.targets)
        for key, value in expected.items():
            assert result[f"{key}@{rule}"] == pytest.approx(100 * value), (rule, key)
    assert "micro_f1_k4plus@thresh@tuned" in result and result["count_k4plus"] == 1
    assert result["settings"] == {
        "threshold_scores": "sigmoid(scores)",
        "threshold_rules": ["thresh@original", "thresh@val", "thresh@0.5", "thresh@tuned"],
        "argmax_fallback": True,
        "ap_ties": "sklearn",
        "bucket_scheme": "default",
    }
    simple = evaluate(logits, bench, bucket_scheme="simple", argmax_fallback=False, sigmoid="never", threshold=-4)
    assert "micro_f1_k3plus@thresh@-4" in simple and "count_k3plus" in simple and "count_k3" not in simple
    assert simple["settings"]["threshold_scores"] == "scores" and not simple["settings"]["argmax_fallback"]
    bench.original = None
    assert "thresh@original" in evaluate(logits, bench)["skipped"]
    with pytest.raises(ValueError, match="bucket_scheme"):
        evaluate(logits, bench, bucket_scheme="coarse")


def test_options_are_keyword_only_parameters_and_a_bad_bucket_scheme_is_a_value_error():
    params = inspect.signature(evaluate).parameters
    options = ("threshold", "sigmoid", "argmax_fallback", "ap_ties", "bucket_scheme")
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in options)
    assert {name: params[name].default for name in options} == dataclasses.asdict(Options())
    with pytest.raises(TypeError):
        evaluate(np.zeros((8, 1000)), _tiny_benchmark(), bucket="simple")
    with pytest.raises(ValueError, match="bucket_scheme must be one of"):
        thresholded.set_metrics(np.ones((2, 3), dtype=bool), np.ones((2, 3), dtype=bool), "coarse")


def test_cli_options_reach_the_report(tmp_path):
    real_like = tmp_path / "refined.json"
    names = [f"{i:040x}.jpeg" for i in range(4)]
    real_like.write_text(json.dumps({n: [str(i), str(i + 10)] if i % 2 else [str(i)] for i, n in enumerate(names)}))
    scores = np.full((4, 1000), -5.0, dtype=np.float32)
    scores[np.arange(4), np.arange(4)] = 3.0
    np.save(tmp_path / "p.npy", scores)
    out = tmp_path / "r.json"
    runner = CliRunner()
    args = ["evaluate", str(tmp_path / "p.npy"), "-b", "inv2-ml", "--labels", str(real_like), "-o", str(out)]
    result = runner.invoke(main, args + ["--ap-ties", "authors", "--bucket-scheme", "simple", "--no-argmax-fallback"])
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())["inv2-ml"]
    assert got["settings"]["ap_ties"] == "authors" and got["settings"]["bucket_scheme"] == "simple"
    assert got["subset_accuracy@thresh@0.5"] == 50.0 and got["mean_iou@thresh@0.5"] == 75.0
    assert "sigmoid applied (the scores are logits)" in result.output and "AP ties: authors" in result.output
    assert "@thresh@val: suffix" in result.output
    help_text = runner.invoke(main, ["evaluate", "--help"]).output
    for option in ("--sigmoid", "--argmax-fallback", "--ap-ties", "--bucket-scheme"):
        assert option in help_text
