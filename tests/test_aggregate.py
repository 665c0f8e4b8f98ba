import json
import math
from pathlib import Path

import numpy as np
import pytest

from multilabel_imagenet import classes, targets
from multilabel_imagenet.builder import aggregate
from multilabel_imagenet.targets import Ambiguity

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "real" / "real.json"
CAT, DOG, TENCH = 281, 207, 0


def test_scheme_names_round_trip_and_errors():
    assert targets.SCHEMES == (
        "local_soft",
        "local_soft+original",
        "local_soft+pred",
        "local_hard@0.5",
        "local_hard@0.5+original",
        "local_hard@0.5+pred",
    )
    for name in targets.SCHEMES:
        assert targets.parse_scheme(name).name == name
    s = targets.parse_scheme("local_hard@0.3+pairs+original")
    assert (s.hard, s.tau, s.global_signals, s.ambiguity) == (True, 0.3, ("original",), "pairs")
    both = targets.parse_scheme("local_soft+pred+original")
    assert both.global_signals == ("original", "pred") and both.name == "local_soft+original+pred"
    assert targets.parse_scheme("one_hot+pred").name == "one_hot+pred"
    assert targets.parse_scheme("local_soft").profile == "paper"
    assert targets.parse_scheme(targets.parse_scheme("local_soft", "authors")).profile == "authors"
    assert targets.parse_scheme("local_hard").tau == 0.5
    assert targets.DEFAULT_SCHEME == "local_soft+original"
    for bad, match in [
        ("global_soft", "unknown scheme"),
        ("local_hard@1.5", "threshold in"),
        ("local_hard@x", "threshold in"),
        ("local_soft+pred+pred", "not allowed"),
        ("local_soft+magic", "not allowed"),
        ("one_hot+original", "only \\+pred"),
        ("one_hot+pairs", "only \\+pred"),
    ]:
        with pytest.raises(ValueError, match=match):
            targets.parse_scheme(bad)


def test_paper_example_soft_and_hard():
    # Sec. 5.2: M1: cat = 0.85, M2: dog = 0.72.
    soft_classes, soft_scores = aggregate.max_over_masks([[CAT, DOG], [DOG, CAT]], [[0.85, 0.05], [0.72, 0.1]])
    assert soft_classes.tolist() == [CAT, DOG] and soft_scores.tolist() == pytest.approx([0.85, 0.72])
    assert soft_classes.dtype == np.int16 and soft_scores.dtype == np.float32
    soft = targets.dense_target("local_soft", soft_classes, soft_scores)
    assert soft.shape == (1000,) and soft[CAT] == pytest.approx(0.85) and soft[DOG] == pytest.approx(0.72)
    assert np.count_nonzero(soft) == 2
    hard = targets.dense_target("local_hard@0.8", soft_classes, soft_scores)
    assert hard[CAT] == 1 and hard[DOG] == 0 and hard.sum() == 1
    assert targets.dense_target("local_hard@0.85", soft_classes, soft_scores)[CAT] == 0, "strictly exceeds"
    assert aggregate.hard_labels(soft_classes, soft_scores, 0.8) == [CAT]


def test_global_signals():
    original = targets.dense_target("local_soft+original", [CAT], [0.85], label=TENCH)
    assert original[TENCH] == 1 and original[CAT] == pytest.approx(0.85)
    with pytest.raises(ValueError, match="original label"):
        targets.dense_target("local_soft+original", [CAT], [0.85])
    pred = targets.dense_target(
        "local_hard@0.5+pred", [CAT, DOG], [0.85, 0.3], global_classes=[DOG, TENCH], global_scores=[0.6, 0.2]
    )
    assert pred[CAT] == 1 and pred[DOG] == pytest.approx(0.6) and pred[TENCH] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="whole-image prediction"):
        targets.dense_target("local_soft+pred", [CAT], [0.85])


def test_authors_profile_on_hand_made_rows():
    # code/deit/datasets.py: relabel_thresh keeps scores >= threshold (lines 159, 181); update_pred_gt sets
    # y[pred] = max(y[pred], pred_prob) for the top-1 class only (lines 110-111).
    row = dict(soft_classes=[CAT, DOG, 5], soft_scores=[0.5, 0.49, 0.9], label=TENCH)
    whole = dict(global_classes=[7, DOG, 9], global_scores=[0.3, 0.7, 0.7])
    paper = targets.dense_target("local_hard@0.5", **row)
    authors = targets.dense_target(targets.parse_scheme("local_hard@0.5", "authors"), **row)
    assert np.flatnonzero(paper).tolist() == [5] and np.flatnonzero(authors).tolist() == [5, CAT]
    scheme = targets.parse_scheme("local_hard@0.5+original+pred", "authors")
    y = targets.dense_target(scheme, **row, **whole)
    expected = np.zeros(1000, dtype=np.float32)
    expected[[CAT, 5, TENCH]] = 1.0
    expected[DOG] = np.float32(0.7)  # the first of the two top scores; 7 and 9 are not added
    np.testing.assert_array_equal(y, expected)
    paper_pred = targets.dense_target("local_soft+pred", **row, **whole)
    assert paper_pred[[7, DOG, 9]].tolist() == pytest.approx([0.3, 0.7, 0.7])
    one_hot = targets.dense_target("one_hot", **row)
    assert np.flatnonzero(one_hot).tolist() == [TENCH] and one_hot[TENCH] == 1.0
    one_hot_pred = targets.dense_target(targets.parse_scheme("one_hot+pred", "authors"), **row, **whole)
    assert np.flatnonzero(one_hot_pred).tolist() == [TENCH, DOG] and one_hot_pred[DOG] == np.float32(0.7)
    with pytest.raises(ValueError, match="1 of 1 images have none"):
        targets.dense_target("local_soft+pred", **row, global_classes=[], global_scores=[])
    padded = dict(soft_classes=np.array([[CAT], [DOG]]), soft_scores=np.array([[0.5], [0.6]], np.float32))
    with pytest.raises(ValueError, match="1 of 2 images have none"):
        targets.dense_targets("local_soft+pred", **padded, global_classes=[[3], [-1]], global_scores=[[0.2], [0]])
    with pytest.raises(ValueError, match="profile must be one of"):
        targets.parse_scheme("local_soft", "released")


def test_table8_pairs_are_shipped_and_named_right():
    table = aggregate._ambiguous_pairs_table()
    assert len(table) == 35  # the rows of Table 8 (its caption's text says 34)
    pairs = aggregate.table8_pairs()
    assert pairs[0] == (classes.index_of("n04355933"), classes.index_of("n04356056"))  # sunglass / sunglasses
    for row, (a, b) in zip(table, pairs, strict=True):
        assert ", ".join(classes.synonyms(a)).startswith(row["name_a"])
        assert ", ".join(classes.synonyms(b)).startswith(row["name_b"])


@pytest.mark.skipif(not REAL.is_file(), reason="shared/benchmarks/real/real.json absent")
def test_table8_counts_match_real():
    real = [set(s) for s in json.loads(REAL.read_text())]
    for row, (a, b) in zip(aggregate._ambiguous_pairs_table(), aggregate.table8_pairs(), strict=True):
        n_a, n_b = sum(a in s for s in real), sum(b in s for s in real)
        n_ab = sum(a in s and b in s for s in real)
        assert (n_a, n_b, n_ab) == (row["freq_a"], row["freq_b"], row["cooccurrence"])
        # The table's two decimals are sometimes truncated, sometimes rounded (84/143 = 0.587 is printed 0.58).
        assert abs(n_ab / n_b - row["conf_a_given_b"]) < 0.01 and abs(n_ab / n_a - row["conf_b_given_a"]) < 0.01


def _calibration_set():
    """40 images: truth has a and b together in 20 of the 30 images with a; we predict b on none of them."""
    a, b = 10, 20
    truth = [{a, b}] * 20 + [{a}] * 10 + [{b}] * 5 + [{30}] * 5
    scores = np.zeros((40, 1000), np.float32)
    scores[:30, a] = 0.9
    scores[30:35, b] = 0.8
    scores[:30, b] = np.linspace(0.45, 0.01, 30)  # our score for the missing class, best first
    scores[35:, 30] = 0.9
    return a, b, truth, scores


def test_calibrate_ambiguity_follows_equation_6():
    a, b, truth, scores = _calibration_set()
    amb = aggregate.calibrate_ambiguity(truth, scores, pairs=[(a, b)])
    # Truth: N_a = 30, N_b = 25, N_ab = 20 -> P(a|b) = 0.8, P(b|a) = 2/3. Ours: N_a = 30, N_b = 5, N_ab = 0.
    # M_a = (0.8 * 5 - 0) / (1 - 0.8) = 20 of our 30 a-only images get b; tau_b = 20th best score on b.
    counts = amb.details["counts"][0]
    assert (counts["n_a"], counts["n_b"], counts["n_ab"], counts["m_a"]) == (30, 5, 0, 20)
    assert amb.tau_b[0] == pytest.approx(float(np.linspace(0.45, 0.01, 30)[19]))
    # M_b = (2/3 * 30 - 0) / (1/3) = 60, capped to our 5 b-only images; their score on a is 0 -> tau_a = 0.
    assert counts["m_b"] == 5 and amb.tau_a[0] == 0.0
    assert amb.prior[0] == pytest.approx(20 / math.sqrt(30 * 25))
    upgraded = amb.apply_pair_thresholds(scores)
    assert (upgraded[:30, b] == 0.9).sum() == 20, "the thresholds upgrade exactly M_a calibration images"
    np.testing.assert_array_equal(upgraded[35:], scores[35:], err_msg="other images untouched")


def test_no_upgrade_needed_gives_infinite_threshold_and_serialises():
    a, b = 10, 20
    truth = [{a}] * 10 + [{b}] * 10
    scores = np.zeros((20, 1000), np.float32)
    scores[:10, a] = scores[10:, b] = 0.9
    amb = aggregate.calibrate_ambiguity(truth, scores, pairs=[(a, b)], prior_normalisation="min")
    assert amb.tau_a == [math.inf] and amb.tau_b == [math.inf] and amb.prior == [0.0]
    again = Ambiguity.from_dict(json.loads(json.dumps(amb.to_dict())))
    assert again.pairs == amb.pairs and again.tau_a == [math.inf] and again.details["images"] == 20
    with pytest.raises(ValueError, match="scores must be"):
        aggregate.calibrate_ambiguity(truth, scores[:5], pairs=[(a, b)])


def test_prior_propagation_schemes():
    sunglass, sunglasses = aggregate.table8_pairs()[0]
    amb = Ambiguity([(sunglass, sunglasses)], [0.5], [math.inf], [math.inf])
    y = targets.dense_target("local_soft+prior", [sunglass, CAT], [0.9, 0.4], ambiguity=amb)
    assert y[sunglasses] == pytest.approx(0.45) and y[sunglass] == pytest.approx(0.9) and y[CAT] == pytest.approx(0.4)
    y = targets.dense_target("local_soft+prior", [sunglass, sunglasses], [0.9, 0.8], ambiguity=amb)
    assert y[sunglass] == 1.0 and y[sunglasses] == pytest.approx(1.0), "clipped to [0, 1]"
    hard = targets.dense_target("local_hard@0.4+prior+original", [sunglass], [0.9], label=CAT, ambiguity=amb)
    assert hard[sunglass] == hard[sunglasses] == hard[CAT] == 1 and hard.sum() == 3
    with pytest.raises(ValueError, match="calibrated Ambiguity"):
        targets.dense_target("local_soft+pairs", [sunglass], [0.9])


def test_calibrate_on_real_maps_validation_names_to_real():
    real = aggregate.real_label_sets()
    assert len(real) == 50_000 and sum(1 for r in real if not r) == 3163
    ids = [f"ILSVRC2012_val_{i + 1:08d}" for i in range(300)]
    scores = np.zeros((300, 1000), np.float32)
    for i, labels in enumerate(real[:300]):
        if labels:
            scores[i, min(labels)] = 0.9  # a single-label prediction per image
    pairs = aggregate.table8_pairs()
    on_real = aggregate.calibrate_on_real(ids, scores, pairs=pairs)
    direct = aggregate.calibrate_ambiguity(real[:300], scores, pairs=pairs)
    assert on_real.to_dict() == direct.to_dict()
    with pytest.raises(ValueError, match="not an ImageNet validation image"):
        aggregate.calibrate_on_real(["n01440764_1"], scores[:1])
