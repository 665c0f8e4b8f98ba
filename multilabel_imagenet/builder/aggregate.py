"""Calibration side of the training targets (paper Sec. 5.2, Supp. B.3 and Supp. E): per-mask class scores ->
the stored Local-Soft vector, Local-Hard label lists, and the Supp. E ambiguity fixes calibrated on a multi-label
set (ReaL by default).

The scheme grammar, :class:`Ambiguity` and the dense target construction live in :mod:`multilabel_imagenet.targets`
(so that loading a dataset needs nothing from the builder).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from importlib import resources

import numpy as np

from multilabel_imagenet import classes
from multilabel_imagenet.targets import DEFAULT_TAU, Ambiguity


def max_over_masks(
    mask_classes: Sequence[Sequence[int]], mask_scores: Sequence[Sequence[float]]
) -> tuple[np.ndarray, np.ndarray]:
    """Local-Soft in sparse form: the union of the masks' top-k classes, each with its highest score over masks,
    sorted by score (descending, ties by class index). Returns ``(int16 classes, float32 scores)``."""
    best: dict[int, float] = {}
    for cls_row, score_row in zip(mask_classes, mask_scores, strict=True):
        for c, s in zip(cls_row, score_row, strict=True):
            c = classes.check_index(int(c))
            if float(s) > best.get(c, -1.0):
                best[c] = float(s)
    order = sorted(best, key=lambda c: (-best[c], c))
    return np.array(order, dtype=np.int16), np.array([best[c] for c in order], dtype=np.float32)


def hard_labels(soft_classes: Sequence[int], soft_scores: Sequence[float], tau: float = DEFAULT_TAU) -> list[int]:
    """Classes whose Local-Soft score exceeds ``tau`` (Local-Hard as a label list), sorted by class index."""
    return sorted(int(c) for c, s in zip(soft_classes, soft_scores, strict=True) if s > tau)


def _ambiguous_pairs_table() -> list[dict]:
    text = resources.files("multilabel_imagenet.builder").joinpath("data/ambiguous_pairs.json").read_text("utf-8")
    return json.loads(text)["pairs"]


def table8_pairs() -> list[tuple[int, int]]:
    """The ambiguous class pairs of the paper's Table 8 as (a, b) class indices, in the table's order."""
    return [(classes.index_of(p["a"]), classes.index_of(p["b"])) for p in _ambiguous_pairs_table()]


def _required_copies(conditional: float, n_other: int, n_both: int, n_candidates: int) -> int:
    """Eq. 6 solved for M: P = (N_ab + M) / (N_other + M)  =>  M = (P N_other - N_ab) / (1 - P), capped to
    [0, N_candidates] (the images holding only the class that would be upgraded), rounded to nearest."""
    if conditional >= 1.0:
        return n_candidates
    m = (conditional * n_other - n_both) / (1.0 - conditional)
    return int(max(0, min(round(m), n_candidates)))


def calibrate_ambiguity(
    truth: Sequence[Iterable[int]],
    scores: np.ndarray,
    pairs: Sequence[tuple[int, int]] | None = None,
    tau: float = DEFAULT_TAU,
    prior_normalisation: str = "geometric",
) -> Ambiguity:
    """Calibrate the Supp. E fixes on a multi-label set (ReaL by default in the build).

    ``truth``: ground-truth label sets of the calibration images (empty sets are ignored); ``scores``: our
    Local-Soft vectors for the same images, [N, 1000]. Our predicted sets are ``scores > tau``.

    Prior (eq. 5): the paper asks for a symmetric C with C_ij the "normalised frequency" of i and j together
    in the ground truth, without fixing the normalisation. ``geometric`` (default) uses
    N_ij / sqrt(N_i N_j), the geometric mean of P(i|j) and P(j|i); ``min`` uses N_ij / max(N_i, N_j).

    Thresholds (eq. 6), our reading of Supp. E.2: N_a, N_b, N_ab count our predicted sets; P(a|b), P(b|a)
    are the ground truth's conditionals. Upgrading M_a images that hold a but not b with b must bring our
    P(a|b) = (N_ab + M_a) / (N_b + M_a) to the truth's, capped to [0, N_a - N_ab]; those candidates are
    ranked by their score on b and the lowest score among the top M_a becomes tau_b (M_b, tau_a likewise).
    M = 0 gives tau = inf (never add).
    """
    if prior_normalisation not in ("geometric", "min"):
        raise ValueError(f"prior_normalisation must be 'geometric' or 'min', got {prior_normalisation!r}")
    pairs = list(pairs) if pairs is not None else table8_pairs()
    truth_sets = [set(map(int, t)) for t in truth]
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape != (len(truth_sets), classes.NUM_CLASSES):
        raise ValueError(f"scores must be [{len(truth_sets)}, {classes.NUM_CLASSES}], got {list(scores.shape)}")
    keep = np.array([bool(t) for t in truth_sets])
    truth_sets = [t for t in truth_sets if t]
    scores = scores[keep]
    predicted = scores > tau
    truth_count: dict[int, int] = {}
    for t in truth_sets:
        for c in t:
            truth_count[c] = truth_count.get(c, 0) + 1
    prior, tau_a, tau_b, rows = [], [], [], []
    for a, b in pairs:
        ta_n, tb_n = truth_count.get(a, 0), truth_count.get(b, 0)
        tab_n = sum(1 for t in truth_sets if a in t and b in t)
        if prior_normalisation == "geometric":
            prior.append(tab_n / math.sqrt(ta_n * tb_n) if ta_n and tb_n else 0.0)
        else:
            prior.append(tab_n / max(ta_n, tb_n) if max(ta_n, tb_n) else 0.0)
        p_a_given_b = tab_n / tb_n if tb_n else 0.0
        p_b_given_a = tab_n / ta_n if ta_n else 0.0
        has_a, has_b = predicted[:, a], predicted[:, b]
        n_a, n_b, n_ab = int(has_a.sum()), int(has_b.sum()), int((has_a & has_b).sum())
        only_a, only_b = np.flatnonzero(has_a & ~has_b), np.flatnonzero(has_b & ~has_a)
        m_a = _required_copies(p_a_given_b, n_b, n_ab, len(only_a))
        m_b = _required_copies(p_b_given_a, n_a, n_ab, len(only_b))
        tau_b.append(float(np.sort(scores[only_a, b])[::-1][m_a - 1]) if m_a else math.inf)
        tau_a.append(float(np.sort(scores[only_b, a])[::-1][m_b - 1]) if m_b else math.inf)
        rows.append({"n_a": n_a, "n_b": n_b, "n_ab": n_ab, "m_a": m_a, "m_b": m_b})
    details = {"tau": tau, "prior_normalisation": prior_normalisation, "images": len(truth_sets), "counts": rows}
    return Ambiguity(pairs, prior, tau_a, tau_b, details)


def real_label_sets() -> list[set[int]]:
    """ReaL (Beyer et al. 2020): the label set of each of the 50,000 validation images, from timm's copy."""
    text = classes.timm_info_file("imagenet_real_labels.json").read_text("utf-8")
    return [set(labels) for labels in json.loads(text)]


_VAL_ID = re.compile(r"^ILSVRC2012_val_(\d{8})$")


def calibrate_on_real(image_ids: Sequence[str], scores: np.ndarray, **kwargs) -> Ambiguity:
    """:func:`calibrate_ambiguity` with ReaL as the ground truth (the paper's calibration set, Supp. E):
    ``image_ids`` are validation stems ``ILSVRC2012_val_XXXXXXXX`` and ``scores`` our Local-Soft vectors for them."""
    real = real_label_sets()
    truth = []
    for image_id in image_ids:
        match = _VAL_ID.match(image_id)
        if match is None or not 1 <= int(match.group(1)) <= len(real):
            raise ValueError(f"{image_id!r} is not an ImageNet validation image (ILSVRC2012_val_00000001..50000)")
        truth.append(real[int(match.group(1)) - 1])
    return calibrate_ambiguity(truth, scores, **kwargs)
