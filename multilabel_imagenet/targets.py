"""Training targets from the stored sparse scores (paper Sec. 5.2 and Supp. E): scheme names, ambiguity fixes,
dense construction.

The dataset stores, per image, the Local-Soft vector as sparse ``(soft_classes, soft_scores)`` (the element-wise
max over masks of each mask's stored top-k scores) and the labeler's whole-image prediction as sparse
``(global_classes, global_scores)``. A *scheme* names how a dense target is built from those:

- ``local_soft``: y[c] = max over masks of p_mask[c]                                        (Sec. 5.2)
- ``local_hard@TAU``: 1 where that max exceeds TAU (strictly, "exceeds" in Sec. 5.2), else 0
- ``one_hot``: the original ImageNet label alone (the single-label baseline of Table 6)
- ``+original``: y[c] = max(y[c], 1 for the original ImageNet label)                       (Sec. 5.2)
- ``+pred``: y[c] = max(y[c], the labeler's whole-image probability of c)                  (Sec. 5.2)
- ``+prior`` / ``+pairs``: the ambiguity fixes of Supp. E, applied to the local vector before the threshold and
  the global signals: co-occurrence prior propagation p' = clip(C p, 0, 1) (eq. 5), or asymmetric pair
  thresholds (eq. 6), both from a calibrated :class:`Ambiguity`.

``+original`` and ``+pred`` may be combined (``local_soft+original+pred``). The paper's default is
``local_soft+original`` (Sec. 5.2, "we adopt Local-Soft + Original"). Classes outside a mask's stored top-k count
as 0, a class listed twice counts with its highest score.

A *profile* (:data:`PROFILES`) says whose reading of the rules is applied: ``paper`` (the text, above) or
``authors``, the released training code (github jchen175/MultiLabel-ImageNet, ``code/deit/datasets.py``), which
differs in two places: Local-Hard keeps scores ``>=`` TAU (lines 159, 181), and ``+pred`` adds only the
whole-image top-1 class with its probability (``update_pred_gt``, lines 110-111) where the paper's rule takes the
max with every stored whole-image score.

Everything is numpy (one
item: :func:`dense_target`, padded batches: :func:`dense_targets`); :func:`dense_targets_torch` wraps the batch
version for tensors. Calibration lives in :mod:`multilabel_imagenet.builder.aggregate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from multilabel_imagenet import classes

if TYPE_CHECKING:
    import torch

DEFAULT_TAU = 0.5
"""Local-Hard threshold of the paper's statistics (Table 5) and of the ``labels`` column."""
DEFAULT_SCHEME = "local_soft+original"
"""The paper's adopted default (Sec. 5.2 / Table 6)."""
GLOBAL_SIGNALS = ("original", "pred")
AMBIGUITY_FIXES = ("prior", "pairs")
PROFILES = ("paper", "authors")
"""Whose reading of the scheme rules applies: the paper's text or the authors' released code (module docstring)."""
SCHEMES = tuple(
    local + suffix
    for local in ("local_soft", f"local_hard@{DEFAULT_TAU:g}")
    for suffix in ("", *(f"+{g}" for g in GLOBAL_SIGNALS))
)
"""The six schemes of Table 6 (any TAU is accepted for ``local_hard``; ``+prior``/``+pairs`` may be added)."""


@dataclass(frozen=True)
class Scheme:
    """A parsed scheme name (see the module docstring for the grammar) and the profile that reads it."""

    local: str = "soft"  # "soft", "hard" or "one_hot"
    tau: float = DEFAULT_TAU
    global_signals: tuple[str, ...] = ()  # in GLOBAL_SIGNALS order
    ambiguity: str | None = None
    profile: str = "paper"  # PROFILES

    @property
    def hard(self) -> bool:
        return self.local == "hard"

    @property
    def name(self) -> str:
        local = {"soft": "local_soft", "hard": f"local_hard@{self.tau:g}", "one_hot": "one_hot"}[self.local]
        return "+".join([local, *([self.ambiguity] if self.ambiguity else []), *self.global_signals])


def parse_scheme(name: str | Scheme, profile: str | None = None) -> Scheme:
    """Parse ``local_soft`` / ``local_hard[@TAU]`` followed by any of ``+original``/``+pred`` and at most one of
    ``+prior``/``+pairs`` (in any order), or ``one_hot`` (optionally ``+pred``). ``profile`` (:data:`PROFILES`;
    ``None``: a :class:`Scheme`'s own, else ``paper``) sets how the rules read. Raises ``ValueError`` naming what
    is wrong."""
    if profile is not None and profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if isinstance(name, Scheme):
        return name if profile is None else replace(name, profile=profile)
    local, *extras = name.strip().split("+")
    kind, tau = "soft", DEFAULT_TAU
    if local.startswith("local_hard"):
        kind = "hard"
        rest = local[len("local_hard") :]
        if rest:
            try:
                tau = float(rest.removeprefix("@")) if rest.startswith("@") else math.nan
            except ValueError:
                tau = math.nan
            if not 0.0 <= tau < 1.0:
                raise ValueError(f"scheme {name!r}: local_hard takes a threshold in [0, 1), e.g. local_hard@0.5")
    elif local == "one_hot":
        kind = "one_hot"
    elif local != "local_soft":
        raise ValueError(f"unknown scheme {name!r}: start with local_soft, local_hard[@TAU] or one_hot; e.g. {SCHEMES}")
    signals: set[str] = set()
    ambiguity = None
    for extra in extras:
        if kind == "one_hot" and extra != "pred":
            raise ValueError(f"scheme {name!r}: one_hot is the original label alone and takes only +pred")
        if extra in GLOBAL_SIGNALS and extra not in signals:
            signals.add(extra)
        elif extra in AMBIGUITY_FIXES and ambiguity is None:
            ambiguity = extra
        else:
            raise ValueError(
                f"scheme {name!r}: {extra!r} is not allowed here; add each of {'/'.join(GLOBAL_SIGNALS)} at most "
                f"once and at most one of {'/'.join(AMBIGUITY_FIXES)}"
            )
    global_signals = tuple(g for g in GLOBAL_SIGNALS if g in signals)
    return Scheme(kind, tau, global_signals, ambiguity, profile or "paper")


@dataclass
class Ambiguity:
    """Calibrated ambiguity fixes (Supp. E): per pair (a, b), a prior weight (entry C_ab = C_ba of the
    co-occurrence matrix, whose diagonal is 1 and other entries 0) and thresholds tau_a, tau_b (``inf`` = never
    add). Build one with :func:`multilabel_imagenet.builder.aggregate.calibrate_ambiguity`; store it with
    :meth:`to_dict`. The index arrays are built on first use: do not change the lists afterwards."""

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

    @cached_property
    def _index(self) -> tuple[np.ndarray, ...]:
        """(a, b, prior) per pair, and per rule "trigger is the top-1 class and p[target] >= threshold": trigger,
        target, threshold (the b-rules of every pair, then the a-rules)."""
        a, b = np.array(self.pairs, dtype=np.intp).reshape(-1, 2).T
        return (
            a,
            b,
            np.array(self.prior, dtype=np.float64),
            np.concatenate([a, b]),
            np.concatenate([b, a]),
            np.array([*self.tau_b, *self.tau_a], dtype=np.float64),
        )

    def propagate_prior(self, p: np.ndarray) -> np.ndarray:
        """Eq. 5: p' = clip(C p, 0, 1) for soft label vectors p [..., K] (a new array in p's dtype)."""
        a, b, w = self._index[:3]
        p2 = p.reshape(-1, p.shape[-1])
        w = w.astype(p.dtype)
        out = p2.copy()
        # In pair order, a's terms then b's: the order of the sums (a class sits in up to 5 pairs) is fixed.
        np.add.at(out, (slice(None), a), p2[:, b] * w)
        np.add.at(out, (slice(None), b), p2[:, a] * w)
        return np.clip(out, 0.0, 1.0, out=out).reshape(p.shape)

    def apply_pair_thresholds(self, p: np.ndarray) -> np.ndarray:
        """If a is the top-1 class and p[b] >= tau_b, b gets a's score; symmetrically for b (Supp. E.2), for
        soft label vectors p [..., K] (a new array in p's dtype; top-1 ties go to the lower class index).

        ``>=`` rather than "exceeds": tau is the lowest score selected on the calibration set, and that image
        was meant to be upgraded too."""
        trigger, target, threshold = self._index[3:]
        p2 = p.reshape(-1, p.shape[-1])
        top1 = p2.argmax(axis=1)
        rows, rule = np.nonzero((trigger == top1[:, None]) & (p2[:, target] >= threshold.astype(p.dtype)))
        out = p2.copy()
        np.maximum.at(out, (rows, target[rule]), p2[rows, trigger[rule]])
        return out.reshape(p.shape)


def _apply(
    s: Scheme,
    y: np.ndarray,
    labels: np.ndarray | None,
    global_index: np.ndarray | None,
    global_scores: np.ndarray | None,
    ambiguity: Ambiguity | None,
) -> np.ndarray:
    """The scheme's steps after the local scatter, on dense y [B, K]; ``global_index`` is flat (row * K + class)."""
    if s.ambiguity is not None:
        if ambiguity is None:
            raise ValueError(f"scheme {s.name!r} needs a calibrated Ambiguity (see calibrate_ambiguity)")
        y = ambiguity.propagate_prior(y) if s.ambiguity == "prior" else ambiguity.apply_pair_thresholds(y)
    if s.hard:
        tau = y.dtype.type(s.tau)
        y = (y >= tau if s.profile == "authors" else y > tau).astype(y.dtype)
    if s.local == "one_hot" or "original" in s.global_signals:
        if labels is None or bool((labels < 0).any()):
            raise ValueError(f"scheme {s.name!r} needs the original label of every image")
        if s.local == "one_hot":
            y[:] = 0.0
        y[np.arange(len(y)), labels] = 1.0
    if "pred" in s.global_signals:
        global_index, global_scores = _whole_image(s, len(y), y.shape[1], global_index, global_scores)
        # y >= 0, so this is max(y, the scattered prediction with 0 elsewhere).
        np.maximum.at(y.reshape(-1), global_index, global_scores.astype(y.dtype, copy=False))
    return y


def _whole_image(
    s: Scheme, rows: int, num_classes: int, index: np.ndarray | None, scores: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The whole-image prediction entries ``+pred`` adds (flat index, score): all stored ones (``paper``) or each
    row's top-1, the first of its highest scores in stored order (``authors``). Every row must have one."""
    if index is None or scores is None:
        index, scores = np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.float32)
    row = index // num_classes
    missing = rows - np.count_nonzero(np.bincount(row, minlength=rows))
    if missing:
        raise ValueError(
            f"scheme {s.name!r} needs the labeler's whole-image prediction (global_classes/global_scores), but "
            f"{missing} of {rows} images have none (a dataset imported from the authors' TSV stores none); use a "
            "scheme without +pred"
        )
    if s.profile == "authors":
        first = np.lexsort((-scores, row))  # by row, highest score first, stored order among equals
        first = first[np.r_[True, row[first][1:] != row[first][:-1]]]
        index, scores = index[first], scores[first]
    return index, scores


def _check_classes(values: np.ndarray, num_classes: int) -> None:
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise IndexError(f"class indices must lie in 0..{num_classes - 1}, got {values.min()}..{values.max()}")


def dense_target(
    scheme: str | Scheme,
    soft_classes: Sequence[int] | np.ndarray,
    soft_scores: Sequence[float] | np.ndarray,
    label: int | None = None,
    global_classes: Sequence[int] | np.ndarray | None = None,
    global_scores: Sequence[float] | np.ndarray | None = None,
    ambiguity: Ambiguity | None = None,
    num_classes: int = classes.NUM_CLASSES,
    *,
    check: bool = True,
) -> np.ndarray:
    """One image's float32 target [num_classes]. ``check=False`` skips the class-range check (for stored rows,
    which the writer validated)."""
    s = parse_scheme(scheme)
    soft_classes, soft_scores = np.asarray(soft_classes), np.asarray(soft_scores)
    has_global = global_classes is not None and global_scores is not None
    if has_global:
        global_classes, global_scores = np.asarray(global_classes), np.asarray(global_scores)
        if global_classes.dtype.kind not in "iu":  # an empty list comes as float64
            global_classes = global_classes.astype(np.intp)
    if check:
        _check_classes(soft_classes, num_classes)
        if has_global:
            _check_classes(global_classes, num_classes)
    y = np.zeros(num_classes, dtype=np.float32)
    if soft_classes.size:
        np.maximum.at(y, soft_classes, soft_scores.astype(np.float32, copy=False))
    y = _apply(
        s,
        y.reshape(1, num_classes),
        None if label is None else np.array([label]),
        global_classes if has_global else None,
        global_scores if has_global else None,
        ambiguity,
    )
    return y.reshape(num_classes)


def _flat(indices: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded [B, k] class indices (negative = padding) -> (flat index row * K + class, position in the [B, k])."""
    if indices.size and indices.max() >= num_classes:
        raise IndexError(f"class index {indices.max()} is outside 0..{num_classes - 1}")
    rows, cols = np.nonzero(indices >= 0)
    return rows * num_classes + indices[rows, cols], (rows, cols)


def dense_targets(
    scheme: str | Scheme,
    soft_classes: np.ndarray,
    soft_scores: np.ndarray,
    labels: np.ndarray | None = None,
    global_classes: np.ndarray | None = None,
    global_scores: np.ndarray | None = None,
    ambiguity: Ambiguity | None = None,
    num_classes: int = classes.NUM_CLASSES,
) -> np.ndarray:
    """Batched targets [B, num_classes] in ``soft_scores``' floating dtype (float32 for other dtypes), from
    padded [B, k] classes (negative = padding) and scores; ``labels`` [B] (``+original``; -1 is refused)."""
    s = parse_scheme(scheme)
    soft_classes, soft_scores = np.asarray(soft_classes), np.asarray(soft_scores)
    dtype = soft_scores.dtype if soft_scores.dtype.kind == "f" else np.dtype(np.float32)
    y = np.zeros(len(soft_classes) * num_classes, dtype=dtype)
    index, where = _flat(soft_classes, num_classes)
    np.maximum.at(y, index, soft_scores[where].astype(dtype, copy=False))
    global_index = global_values = None
    if global_classes is not None and global_scores is not None:
        global_index, where = _flat(np.asarray(global_classes), num_classes)
        global_values = np.asarray(global_scores)[where]
    y = y.reshape(len(soft_classes), num_classes)
    return _apply(s, y, None if labels is None else np.asarray(labels), global_index, global_values, ambiguity)


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
    """:func:`dense_targets` for tensors, on ``soft_scores``' device, in its floating dtype (float32 for other
    dtypes; bfloat16 is computed in float32 and rounded at the end)."""
    import torch

    dtype = soft_scores.dtype if soft_scores.is_floating_point() else torch.float32
    work = torch.float32 if dtype == torch.bfloat16 else dtype

    def host(t: torch.Tensor | None, cast: torch.dtype | None = None) -> np.ndarray | None:
        return None if t is None else t.detach().to("cpu", cast or t.dtype).numpy()

    y = dense_targets(
        scheme,
        host(soft_classes),
        host(soft_scores, work),
        host(labels),
        host(global_classes),
        host(global_scores, work),
        ambiguity,
        num_classes,
    )
    return torch.from_numpy(y).to(soft_scores.device, dtype)
