"""targets: the numpy targets equal a straightforward torch computation (the former implementation, extended to
the authors' profile) bit for bit."""

import math

import numpy as np
import pytest
import torch

from multilabel_imagenet import targets
from multilabel_imagenet.builder import aggregate

K = 1000
PAIRS = aggregate.table8_pairs()
PAIR_CLASSES = sorted({c for pair in PAIRS for c in pair})
SCHEMES = [
    local + fix + signal
    for local in ("local_soft", "local_hard@0.5", "local_hard@0.3")
    for fix in ("", "+prior", "+pairs")
    for signal in ("", "+original", "+pred", "+original+pred")
] + ["one_hot", "one_hot+pred"]


def _scatter(indices: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    safe = torch.where(indices < 0, torch.full_like(indices, K), indices)
    out = torch.zeros(len(indices), K + 1, dtype=values.dtype)
    out.scatter_reduce_(1, safe, values, reduce="amax", include_self=True)
    return out[:, :K]


def _top1_only(global_classes, global_scores):
    """The authors' update_pred_gt input: per row, the first stored class with the row's highest score."""
    classes, scores = torch.full_like(global_classes, -1), torch.zeros_like(global_scores)
    for i, (row, values) in enumerate(zip(global_classes.tolist(), global_scores.tolist(), strict=True)):
        kept = [(v, -j) for j, (c, v) in enumerate(zip(row, values, strict=True)) if c >= 0]
        j = -max(kept)[1]
        classes[i, 0], scores[i, 0] = row[j], values[j]
    return classes, scores


def _reference(scheme, profile, classes, scores, labels, global_classes, global_scores, amb) -> torch.Tensor:
    """Eq. 5 with index_add_, the pair rule one pair at a time, then threshold and global signals, in float32."""
    s = targets.parse_scheme(scheme)
    y = _scatter(classes, scores)
    if s.ambiguity == "prior":
        a, b = (torch.tensor(side) for side in zip(*amb.pairs, strict=True))
        w = torch.tensor(amb.prior, dtype=torch.float32)
        out = y.clone()
        out.index_add_(1, a, y[:, b] * w)
        out.index_add_(1, b, y[:, a] * w)
        y = out.clamp(0.0, 1.0)
    elif s.ambiguity == "pairs":
        top1, out = y.argmax(dim=1), y.clone()
        for (a, b), ta, tb in zip(amb.pairs, amb.tau_a, amb.tau_b, strict=True):
            add_b = (top1 == a) & (y[:, b] >= tb)
            add_a = (top1 == b) & (y[:, a] >= ta)
            out[:, b] = torch.where(add_b, torch.maximum(out[:, b], y[:, a]), out[:, b])
            out[:, a] = torch.where(add_a, torch.maximum(out[:, a], y[:, b]), out[:, a])
        y = out
    if s.hard:
        y = (y >= s.tau if profile == "authors" else y > s.tau).float()
    if s.local == "one_hot":
        y = torch.nn.functional.one_hot(labels, K).float()
    if "original" in s.global_signals:
        y[torch.arange(len(y)), labels] = 1.0
    if "pred" in s.global_signals:
        if profile == "authors":
            global_classes, global_scores = _top1_only(global_classes, global_scores)
        y = torch.maximum(y, _scatter(global_classes, global_scores))
    return y


def _pad(rows, fill, dtype):
    width = max(len(r) for r in rows)
    return np.array([list(r) + [fill] * (width - len(r)) for r in rows], dtype=dtype).reshape(len(rows), width)


def _random_batch(rng, n=400):
    """Rows of 0..14 classes, often ambiguous-pair classes (so the fixes act), sometimes a class twice, and
    scores that sit exactly on the thresholds."""
    rows = []
    for _ in range(n):
        k = int(rng.integers(0, 13))
        pool = PAIR_CLASSES if rng.random() < 0.7 else range(K)
        c = rng.choice(pool, k)
        s = rng.uniform(0, 1, k).astype(np.float32)
        s[rng.random(k) < 0.1] = rng.choice(np.array([0.5, 0.3, 1.0, 0.0], dtype=np.float32))
        if rng.random() < 0.4:  # a pair's top-1 member and its partner just below
            pair = PAIRS[rng.integers(len(PAIRS))][:: rng.choice([1, -1])]
            c, s = np.r_[c, pair], np.r_[s, rng.uniform(0.95, 1.0), rng.uniform(0, 0.6)].astype(np.float32)
        g = int(rng.integers(1, 6))
        gs = rng.uniform(0, 1, g).astype(np.float32)
        if g > 1 and rng.random() < 0.2:  # a tie for the whole-image top-1
            gs[rng.integers(g)] = gs.max()
        rows.append((c, s, int(rng.integers(0, K)), rng.choice(K, g), gs))
    return rows


def _random_ambiguity(rng):
    def tau():
        return [math.inf if rng.random() < 0.2 else float(rng.uniform(0, 0.6)) for _ in PAIRS]

    return targets.Ambiguity(PAIRS, rng.uniform(0, 1, len(PAIRS)).tolist(), tau(), tau())


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    rows = _random_batch(rng)
    padded = dict(
        soft_classes=_pad([r[0] for r in rows], -1, np.int64),
        soft_scores=_pad([r[1] for r in rows], 0.0, np.float32),
        labels=np.array([r[2] for r in rows]),
        global_classes=_pad([r[3] for r in rows], -1, np.int64),
        global_scores=_pad([r[4] for r in rows], 0.0, np.float32),
    )
    return rows, padded, _random_ambiguity(rng)


@pytest.mark.parametrize("profile", targets.PROFILES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_item_batch_and_torch_targets_equal_the_reference(batch, scheme, profile):
    rows, padded, amb = batch
    expected = _reference(scheme, profile, *(torch.from_numpy(v) for v in padded.values()), amb).numpy()
    parsed = targets.parse_scheme(scheme, profile)
    for i, (c, s, label, gc, gs) in enumerate(rows):
        got = targets.dense_target(parsed, c, s, label, gc, gs, amb)
        assert got.dtype == np.float32 and got.shape == (K,)
        np.testing.assert_array_equal(got, expected[i], err_msg=f"{scheme} row {i}")
        fast = targets.dense_target(parsed, c.astype(np.int16), s, label, gc.astype(np.int16), gs, amb, check=False)
        np.testing.assert_array_equal(fast, expected[i])
    np.testing.assert_array_equal(targets.dense_targets(parsed, **padded, ambiguity=amb), expected)
    tensors = {k: torch.from_numpy(v) for k, v in padded.items()}
    np.testing.assert_array_equal(targets.dense_targets_torch(parsed, **tensors, ambiguity=amb).numpy(), expected)


def test_the_fixes_act_on_the_random_rows(batch):
    rows, padded, amb = batch
    plain = targets.dense_targets("local_soft", padded["soft_classes"], padded["soft_scores"])
    pairs = targets.dense_targets("local_soft+pairs", padded["soft_classes"], padded["soft_scores"], ambiguity=amb)
    prior = targets.dense_targets("local_soft+prior", padded["soft_classes"], padded["soft_scores"], ambiguity=amb)
    assert (pairs != plain).any(axis=1).sum() > 20 and (prior != plain).any(axis=1).sum() > 100
    # Eq. 5 as a matrix product: C = I + the symmetric pair weights.
    c = np.eye(K)
    for (a, b), w in zip(amb.pairs, amb.prior, strict=True):
        c[a, b] += w
        c[b, a] += w
    np.testing.assert_allclose(prior, np.clip(plain @ c.T, 0, 1), rtol=0, atol=1e-6)


def test_dtype_padding_and_range_errors():
    half = targets.dense_targets("local_soft", np.array([[3, -1]]), np.array([[0.5, 0.0]], dtype=np.float16))
    assert half.dtype == np.float16 and half[0, 3] == 0.5 and np.count_nonzero(half) == 1
    as_torch = targets.dense_targets_torch("local_soft", torch.tensor([[3, -1]]), torch.tensor([[0.5, 0.0]]).bfloat16())
    assert as_torch.dtype == torch.bfloat16 and as_torch[0, 3] == 0.5
    as_half = targets.dense_targets_torch("local_soft", torch.tensor([[3, -1]]), torch.tensor([[0.5, 0.0]]).half())
    assert as_half.dtype == torch.float16 and as_half[0, 3] == 0.5
    with pytest.raises(IndexError, match="outside 0..999"):
        targets.dense_targets("local_soft", np.array([[1000]]), np.array([[0.5]], dtype=np.float32))
    with pytest.raises(IndexError, match="must lie in 0..999"):
        targets.dense_target("local_soft", [-1], [0.5])
    with pytest.raises(ValueError, match="original label of every image"):
        targets.dense_targets("local_soft+original", np.array([[3]]), np.array([[0.5]]), labels=np.array([-1]))
