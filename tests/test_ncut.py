"""Normalised-cut solvers: the exact reference, the batched fast solver, degenerate graphs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from multilabel_imagenet.builder import ncut
from multilabel_imagenet.builder.synthetic import blob_features as _blob_features


def blob_features(h: int, w: int, d: int, seed: int) -> torch.Tensor:
    return _blob_features(h, w, d, seed, max_radius=1 / 3)


def generalised_residual(a: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(relative residual of (D - A) x = lambda D x at the Rayleigh quotient, that quotient)."""
    d = a.sum(axis=1)
    lx = d * x - a @ x
    lam = float(x @ lx / (x @ (d * x)))
    return float(np.linalg.norm(lx - lam * d * x) / np.linalg.norm(d * x)), lam


def test_affinity_is_binary_with_eps_and_strict_threshold():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    a = ncut.affinity(f, tau=0.0)
    assert sorted(a.unique().tolist()) == [pytest.approx(ncut.EPS), 1.0]
    assert a[0, 1] == 1 and a[0, 2] == pytest.approx(ncut.EPS)  # cos = 0 is not > 0
    assert torch.all(a[3] == a[3, 0]) and a[3, 3] == pytest.approx(ncut.EPS)  # zero row: cosine 0 everywhere
    assert torch.equal(a, a.T)


def test_exact_solver_returns_the_second_smallest_generalised_eigenvector():
    f = blob_features(12, 12, 16, seed=1)
    a = ncut.affinity(f[None], 0.15)
    (x,) = ncut.ncut_exact(a)
    am = a[0].double().numpy()
    dm = np.diag(am.sum(1))
    evals = scipy.linalg.eigh(dm - am, dm, eigvals_only=True)
    res, lam = generalised_residual(am, x)
    assert res < 1e-8
    assert lam == pytest.approx(evals[1], abs=1e-9)
    assert evals[1] - evals[0] > 1e-6


@pytest.mark.parametrize("grid", [8, 16, 24])
def test_fast_solver_matches_exact_eigenvector(grid):
    f = torch.stack([blob_features(grid, grid, 32, seed=s) for s in range(4)])
    a = ncut.affinity(f, 0.15)
    for xe, xf, am in zip(ncut.ncut_exact(a), ncut.ncut_fast(a), a.double().numpy(), strict=True):
        res, _ = generalised_residual(am, xf)  # x itself, after the D^-1/2 back-transform
        assert res < 1e-4
        ce = xe / np.linalg.norm(xe)
        cf = xf / np.linalg.norm(xf)
        assert abs(ce @ cf) > 1 - 1e-8


def test_forgetting_the_back_transform_would_be_caught():
    """z (the symmetric-form eigenvector) is not a generalised eigenvector when degrees differ: x = D^-1/2 z."""
    f = blob_features(16, 16, 32, seed=3)
    a = ncut.affinity(f[None], 0.15)
    (x,) = ncut.ncut_fast(a)
    am = a[0].double().numpy()
    z = x * np.sqrt(am.sum(1))
    assert generalised_residual(am, x)[0] < 1e-4
    assert generalised_residual(am, z)[0] > 1e-2


def test_fast_solver_handles_low_rank_graphs():
    """Piecewise-constant features give a low-rank graph; the Krylov space becomes invariant early."""
    f = torch.zeros(20, 20, 8)
    f[..., 0] = 1.0
    f[2:9, 3:11] = torch.eye(8)[1]
    f[12:18, 12:19] = torch.eye(8)[2]
    a = ncut.affinity(f.reshape(1, 400, 8), 0.5)
    (xe,) = ncut.ncut_exact(a)
    (xf,) = ncut.ncut_fast(a)
    assert np.all(np.isfinite(xf))
    assert generalised_residual(a[0].double().numpy(), xf)[0] < 1e-4
    assert generalised_residual(a[0].double().numpy(), xe)[0] < 1e-8


@pytest.mark.parametrize(
    "features",
    [
        torch.ones(1, 64, 8),  # uniform image
        torch.zeros(1, 64, 8),  # every patch masked out
        torch.randn(1, 1, 8),  # a single patch
        torch.ones(1, 64, 8) + 1e-3 * torch.randn(1, 64, 8),  # near-uniform: every cosine above tau
    ],
)
def test_degenerate_graphs_give_no_cut(features):
    a = ncut.affinity(features, 0.2)
    assert ncut.ncut_exact(a) == [None]
    assert ncut.ncut_fast(a) == [None]


def test_batch_mixes_degenerate_and_regular_graphs():
    f = torch.stack([torch.ones(100, 8), blob_features(10, 10, 8, seed=2)])
    xs = ncut.ncut_fast(ncut.affinity(f, 0.15))
    assert xs[0] is None and xs[1] is not None and np.all(np.isfinite(xs[1]))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="square"):
        ncut.ncut_fast(torch.ones(3, 4))
    with pytest.raises(ValueError, match="features"):
        ncut.affinity(torch.ones(5), 0.1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_solver_on_cuda_matches_cpu():
    f = torch.stack([blob_features(32, 32, 64, seed=s) for s in range(3)])
    cpu = ncut.ncut_fast(ncut.affinity(f, 0.15))
    gpu = ncut.ncut_fast(ncut.affinity(f.cuda(), 0.15))
    for xc, xg in zip(cpu, gpu, strict=True):
        assert abs((xc / np.linalg.norm(xc)) @ (xg / np.linalg.norm(xg))) > 1 - 1e-8


def test_fast_solver_hands_unconverged_graphs_to_the_exact_solver():
    f = blob_features(10, 10, 16, seed=5)[None]
    a = ncut.affinity(f, 0.15)
    (x,) = ncut.ncut_fast(a, block=1, steps=1, max_cycles=1, tol=0.0)  # cannot converge in one 1-vector cycle
    (xe,) = ncut.ncut_exact(a)
    assert np.array_equal(x, xe)


@pytest.mark.parametrize("t", [1, 3, 7, 50])
def test_affinity_equals_the_thresholded_full_gram_matrix_and_is_symmetric(t):
    f = torch.randn(2, t, 6)
    f[0, 0] = 0.0  # a masked patch
    n = torch.nn.functional.normalize(f, dim=-1)
    expected = torch.where(n @ n.mT > 0.1, 1.0, ncut.EPS)
    a = ncut.affinity(f, 0.1)
    assert torch.equal(a, a.mT)
    assert (a != expected).sum() <= 2  # float rounding right at tau could flip a symmetric pair at most


def test_exact_solver_solves_the_published_float64_matrix():
    """CutLER builds A in float64 with eps = 1e-5 (np.where(A == 0, eps, A)); the exact solver solves that matrix,
    not float32(1e-5) widened, so the eigenvector has the published rounding (ties then resolve alike)."""
    f = blob_features(10, 10, 16, seed=2)
    a = ncut.affinity(f[None], 0.15)
    am = ncut.published_float64(a[0].numpy())
    unit = torch.nn.functional.normalize(f.float(), p=2, dim=1)
    published = (unit @ unit.T).numpy() > 0.15
    published = np.where(published.astype(float) == 0, 1e-5, published)
    assert am.dtype == np.float64 and np.array_equal(am, published)
    d = np.diag(published.sum(axis=1))
    (x,) = ncut.ncut_exact(a)
    np.testing.assert_array_equal(x, scipy.linalg.eigh(d - published, d, subset_by_index=[1, 2])[1][:, 0])
