"""Per-mask class scores -> image-level training targets (paper Sec. 5.2, Supp. B.3 and Supp. E).

The dataset stores, per image, the Local-Soft vector as sparse ``(soft_classes, soft_scores)`` (the element-wise
max over masks of each mask's stored top-k softmax scores) and the labeler's whole-image prediction as sparse
``(global_classes, global_scores)``. Targets are built from those at load time by a named *scheme*:

- ``local_soft``: y[c] = max over masks of p_mask[c]                                        (Sec. 5.2)
- ``local_hard@TAU``: 1 where that max exceeds TAU (strictly, "exceeds" in Sec. 5.2), else 0
- ``+original``: y[c] = max(y[c], 1 for the original ImageNet label)                       (Sec. 5.2)
- ``+pred``: y[c] = max(y[c], the labeler's whole-image probability of c)                  (Sec. 5.2)
- ``+prior`` / ``+pairs``: the ambiguity fixes of Supp. E, applied to the local vector before the global signal:
  co-occurrence prior propagation p' = clip(C p, 0, 1) (eq. 5), or asymmetric pair thresholds (eq. 6).

The paper's default is ``local_soft+original`` (Sec. 5.2, "we adopt Local-Soft + Original"). Classes outside a
mask's stored top-k count as 0. All functions are pure; the numpy entry point wraps the batched torch one so
both compute the same numbers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch

from multilabel_imagenet import classes

DEFAULT_TAU = 0.5
"""Local-Hard threshold of the paper's statistics (Table 5) and of the ``labels`` column."""
DEFAULT_SCHEME = "local_soft+original"
"""The paper's adopted default (Sec. 5.2 / Table 6)."""
GLOBAL_SIGNALS = ("original", "pred")
AMBIGUITY_FIXES = ("prior", "pairs")
SCHEMES = tuple(
    local + suffix
    for local in ("local_soft", f"local_hard@{DEFAULT_TAU:g}")
    for suffix in ("", *(f"+{g}" for g in GLOBAL_SIGNALS))
)
"""The six schemes of Table 6 (any TAU is accepted for ``local_hard``; ``+prior``/``+pairs`` may be added)."""


@dataclass(frozen=True)
class Scheme:
    """A parsed scheme name; see the module docstring for the grammar."""

    hard: bool = False
    tau: float = DEFAULT_TAU
    global_signal: str | None = None
    ambiguity: str | None = None

    @property
    def name(self) -> str:
        parts = [f"local_hard@{self.tau:g}" if self.hard else "local_soft"]
        parts += [p for p in (self.ambiguity, self.global_signal) if p]
        return "+".join(parts)


def parse_scheme(name: str | Scheme) -> Scheme:
    """Parse ``local_soft`` / ``local_hard[@TAU]`` followed by at most one of ``+original``/``+pred`` and at
    most one of ``+prior``/``+pairs`` (in any order). Raises ``ValueError`` naming what is wrong."""
    if isinstance(name, Scheme):
        return name
    local, *extras = name.strip().split("+")
    hard, tau = False, DEFAULT_TAU
    if local.startswith("local_hard"):
        hard = True
        rest = local[len("local_hard") :]
        if rest:
            try:
                tau = float(rest.removeprefix("@")) if rest.startswith("@") else math.nan
            except ValueError:
                tau = math.nan
            if not 0.0 <= tau < 1.0:
                raise ValueError(f"scheme {name!r}: local_hard takes a threshold in [0, 1), e.g. local_hard@0.5")
    elif local != "local_soft":
        raise ValueError(f"unknown scheme {name!r}: start with local_soft or local_hard[@TAU]; e.g. {SCHEMES}")
    global_signal = ambiguity = None
    for extra in extras:
        if extra in GLOBAL_SIGNALS and global_signal is None:
            global_signal = extra
        elif extra in AMBIGUITY_FIXES and ambiguity is None:
            ambiguity = extra
        else:
            raise ValueError(
                f"scheme {name!r}: {extra!r} is not allowed here; add at most one of "
                f"{'/'.join(GLOBAL_SIGNALS)} and one of {'/'.join(AMBIGUITY_FIXES)}"
            )
    return Scheme(hard, tau, global_signal, ambiguity)


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


@dataclass
class Ambiguity:
    """Calibrated ambiguity fixes (Supp. E): per pair (a, b), a prior weight (entry C_ab = C_ba of the
    co-occurrence matrix, whose diagonal is 1 and other entries 0) and thresholds tau_a, tau_b (``inf`` = never
    add). Build one with :func:`calibrate_ambiguity`; store it with :meth:`to_dict`."""

    pairs: list[tuple[int, int]]
    prior: list[float]
    tau_a: list[float]
    tau_b: list[float]
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        rows = [
            {"a": classes.wnid_of(a), "b": classes.wnid_of(b), "prior": w, "tau_a": ta, "tau_b": tb}
            for (a, b), w, ta, tb in zip(self.pairs, self.prior, self.tau_a, self.tau_b, strict=True)
        ]
        return {"pairs": [{k: (None if v == math.inf else v) for k, v in r.items()} for r in rows], **self.details}

    @classmethod
    def from_dict(cls, data: dict) -> Ambiguity:
        rows = data["pairs"]
        details = {k: v for k, v in data.items() if k != "pairs"}

        def threshold(v):
            return math.inf if v is None else float(v)

        return cls(
            pairs=[(classes.index_of(r["a"]), classes.index_of(r["b"])) for r in rows],
            prior=[float(r["prior"]) for r in rows],
            tau_a=[threshold(r["tau_a"]) for r in rows],
            tau_b=[threshold(r["tau_b"]) for r in rows],
            details=details,
        )

    def propagate_prior(self, p: torch.Tensor) -> torch.Tensor:
        """Eq. 5: p' = clip(C p, 0, 1) for a batch [B, K] of soft label vectors."""
        a, b = (torch.tensor(idx, dtype=torch.long, device=p.device) for idx in zip(*self.pairs, strict=True))
        w = torch.tensor(self.prior, dtype=p.dtype, device=p.device)
        out = p.clone()
        out.index_add_(1, a, p[:, b] * w)
        out.index_add_(1, b, p[:, a] * w)
        return out.clamp_(0.0, 1.0)

    def apply_pair_thresholds(self, p: torch.Tensor) -> torch.Tensor:
        """If a is the top-1 class and p[b] >= tau_b, b gets a's score; symmetrically for b (Supp. E.2).

        ``>=`` rather than "exceeds": tau is the lowest score selected on the calibration set, and that image
        was meant to be upgraded too."""
        top1 = p.argmax(dim=1)
        out = p.clone()
        for (a, b), ta, tb in zip(self.pairs, self.tau_a, self.tau_b, strict=True):
            add_b = (top1 == a) & (p[:, b] >= tb)
            add_a = (top1 == b) & (p[:, a] >= ta)
            out[:, b] = torch.where(add_b, torch.maximum(out[:, b], p[:, a]), out[:, b])
            out[:, a] = torch.where(add_a, torch.maximum(out[:, a], p[:, b]), out[:, a])
        return out


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
    text = resources.files("timm.data._info").joinpath("imagenet_real_labels.json").read_text("utf-8")
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


def _scatter(indices: torch.Tensor, values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense [B, num_classes] from padded sparse [B, K] (index -1 = padding), max over duplicates."""
    safe = torch.where(indices < 0, torch.full_like(indices, num_classes), indices).long()
    out = torch.zeros(indices.shape[0], num_classes + 1, dtype=values.dtype, device=values.device)
    out.scatter_reduce_(1, safe, values.to(out.dtype), reduce="amax", include_self=True)
    return out[:, :num_classes]


def dense_targets_torch(
    scheme: str | Scheme,
    soft_classes: torch.Tensor,
    soft_scores: torch.Tensor,
    labels: torch.Tensor | None = None,
    global_classes: torch.Tensor | None = None,
    global_scores: torch.Tensor | None = None,
    ambiguity: Ambiguity | None = None,
    num_classes: int = classes.NUM_CLASSES,
) -> torch.Tensor:
    """Batched targets [B, num_classes] in ``soft_scores``' floating dtype.

    ``soft_classes``/``soft_scores`` and ``global_classes``/``global_scores`` are padded [B, K] tensors
    (class -1 = padding); ``labels`` is [B] original labels (needed by ``+original``; -1 is refused)."""
    s = parse_scheme(scheme)
    dtype = soft_scores.dtype if soft_scores.is_floating_point() else torch.float32
    y = _scatter(soft_classes, soft_scores.to(dtype), num_classes)
    if s.ambiguity is not None:
        if ambiguity is None:
            raise ValueError(f"scheme {s.name!r} needs a calibrated Ambiguity (see calibrate_ambiguity)")
        y = ambiguity.propagate_prior(y) if s.ambiguity == "prior" else ambiguity.apply_pair_thresholds(y)
    if s.hard:
        y = (y > s.tau).to(dtype)
    if s.global_signal == "original":
        if labels is None or bool((labels < 0).any()):
            raise ValueError(f"scheme {s.name!r} needs the original label of every image")
        y[torch.arange(len(y)), labels.long()] = 1.0
    elif s.global_signal == "pred":
        if global_classes is None or global_scores is None:
            raise ValueError(f"scheme {s.name!r} needs the whole-image prediction (global_classes/global_scores)")
        y = torch.maximum(y, _scatter(global_classes, global_scores.to(dtype), num_classes))
    return y


def _pad(rows: Sequence[Sequence], fill, dtype) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    return torch.tensor([list(r) + [fill] * (width - len(r)) for r in rows], dtype=dtype).reshape(len(rows), width)


def dense_target(
    scheme: str | Scheme,
    soft_classes: Sequence[int],
    soft_scores: Sequence[float],
    label: int | None = None,
    global_classes: Sequence[int] | None = None,
    global_scores: Sequence[float] | None = None,
    ambiguity: Ambiguity | None = None,
    num_classes: int = classes.NUM_CLASSES,
) -> np.ndarray:
    """One image's float32 target [num_classes] (numpy); same rules as :func:`dense_targets_torch`."""
    has_global = global_classes is not None and global_scores is not None
    y = dense_targets_torch(
        scheme,
        _pad([soft_classes], -1, torch.long),
        _pad([soft_scores], 0.0, torch.float32),
        None if label is None else torch.tensor([label]),
        _pad([global_classes], -1, torch.long) if has_global else None,
        _pad([global_scores], 0.0, torch.float32) if has_global else None,
        ambiguity,
        num_classes,
    )
    return y[0].numpy()
