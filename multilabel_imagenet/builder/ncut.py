"""Normalised cut on a binarised cosine-affinity graph of patch features.

Two solvers return the same quantity, the generalised eigenvector x of (D - A) x = lambda D x with the
second-smallest eigenvalue (REFERENCE.md section 1, steps 3-4):

* :func:`ncut_exact` solves the dense generalised problem in float64 with ``scipy.linalg.eigh``, exactly as
  published (CutLER's MaskCut), one graph at a time.
* :func:`ncut_fast` solves the equivalent symmetric problem for a batch of graphs in torch (CPU or CUDA):
  z = eigenvector of M = D^-1/2 A D^-1/2 with the largest-but-one eigenvalue, found by a restarted block
  Krylov (Rayleigh-Ritz) iteration orthogonal to M's known top eigenvector D^1/2 1, then x = D^-1/2 z.

Both return ``None`` for a degenerate graph (fewer than two nodes, or a constant affinity matrix as produced
by a uniform image or by every patch masked out): such a graph has no cut, so there is no object.
The sign of x is arbitrary here (as it is in LAPACK); :mod:`maskcut` fixes it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

# REFERENCE.md section 1 step 3 / paper Supp. A.1: affinities at or below tau become eps = 1e-5, not 0,
# which keeps the graph connected and D positive definite.
EPS = 1e-5

Solver = Callable[[torch.Tensor], list[np.ndarray | None]]
"""A solver maps a batch of affinity matrices (B, T, T) to one x (float64, length T) or None per graph."""


def _threshold(cos: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    ones = torch.ones((), dtype=cos.dtype, device=cos.device)
    return torch.where(cos > tau, ones, ones * eps)


def affinity(features: torch.Tensor, tau: float, eps: float = EPS, blocks: int = 8) -> torch.Tensor:
    """Binarised cosine affinity: 1 where cos(f_i, f_j) > tau, else eps.

    ``features`` is (..., T, d); zero rows (masked patches) have cosine 0 with every patch. The cosine is
    computed in float32 (as published: features on the accelerator, then thresholded) with TF32 disabled.
    The matrix is symmetric by construction: only the block upper triangle (``blocks`` row blocks) is
    multiplied and mirrored, which also saves 40-45% of the time on CPU. Returns float32 (..., T, T).
    """
    if features.ndim < 2:
        raise ValueError(f"features must be (..., T, d), got shape {tuple(features.shape)}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    f = F.normalize(features.float(), p=2, dim=-1)
    t = f.shape[-2]
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        out = torch.empty((*f.shape[:-2], t, t), dtype=torch.float32, device=f.device)
        bounds = [t * i // blocks for i in range(blocks + 1)]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            if start == stop:
                continue
            block = _threshold(f[..., start:stop, :] @ f[..., start:, :].mT, tau, eps)
            out[..., start:stop, start:] = block
            out[..., start:, start:stop] = block.mT
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def degenerate(a: torch.Tensor) -> torch.Tensor:
    """(...,) bool: True where the graph (..., T, T) has no cut (T < 2 or all affinities equal)."""
    if a.shape[-1] < 2:
        return torch.ones(a.shape[:-2], dtype=torch.bool, device=a.device)
    return a.amin(dim=(-2, -1)) == a.amax(dim=(-2, -1))


def _check_batch(a: torch.Tensor) -> None:
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"affinity must be a batch of square matrices (B, T, T), got {tuple(a.shape)}")


def published_float64(a: np.ndarray) -> np.ndarray:
    """A float32 binarised affinity (ones and one eps value) as the float64 matrix the published code solves.

    CutLER's MaskCut thresholds in numpy and writes eps into a float64 array (``np.where(A == 0, eps, A)``), so its
    eps entries are float64(1e-5), not float32(1e-5) = 9.99999975e-06 widened. The two matrices differ by 2.5e-13
    relative, which is enough to change which of several exactly tied eigenvector entries is the largest after
    rounding, and so numpy's argmax seed. The eps entries become the float64 number the float32 one was written
    as (its shortest decimal: 1e-05 for :data:`EPS`)."""
    am = a.astype(np.float64)
    low = a.min()
    if low != 1.0:
        am[a == low] = float(np.format_float_positional(np.float32(low), unique=True))
    return am


def ncut_exact(a: torch.Tensor) -> list[np.ndarray | None]:
    """Reference solver: dense generalised eigenproblem in float64, one graph at a time, on the published float64
    matrix (:func:`published_float64`)."""
    _check_batch(a)
    out: list[np.ndarray | None] = []
    for ai, deg in zip(a.detach().cpu().numpy(), degenerate(a).tolist(), strict=True):
        if deg:
            out.append(None)
            continue
        am = published_float64(ai)
        d = np.diag(am.sum(axis=1))
        _, vecs = scipy.linalg.eigh(d - am, d, subset_by_index=[1, 2])
        out.append(np.ascontiguousarray(vecs[:, 0]))
    return out


def _orthonormalise(v: torch.Tensor, basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Orthonormalise the rows of v (B, b, T) against the orthonormal rows of ``basis`` (B, c, T) and
    each other (float64).

    Rows with nothing left after projection (the Krylov space became invariant) are replaced by fresh random
    directions, so the basis stays orthonormal and every Ritz pair stays valid.
    """
    for attempt in range(3):
        norms = v.norm(dim=2, keepdim=True)
        for _ in range(2):  # classical Gram-Schmidt, twice, is orthogonal to working precision
            v = v - (v @ basis.mT) @ basis
        q, r = torch.linalg.qr(v.mT)
        diag = r.diagonal(dim1=-2, dim2=-1).abs().unsqueeze(-1)
        # Below float32 noise relative to the row before projection: nothing new in it.
        bad = diag <= 1e-6 * norms
        if attempt == 2 or not bool(bad.any()):
            return torch.where(bad, torch.zeros_like(v), q.mT)
        fresh = torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device)
        v = torch.where(bad, fresh, q.mT)
    raise AssertionError("unreachable")


@torch.no_grad()
def ncut_fast(
    a: torch.Tensor,
    *,
    block: int = 16,
    steps: int = 4,
    max_cycles: int = 30,
    tol: float = 1e-6,
    seed: int = 0,
) -> list[np.ndarray | None]:
    """Batched fast solver (torch, CPU or CUDA) for the same eigenvector as :func:`ncut_exact`.

    Works on M = D^-1/2 A D^-1/2 (eigenvalues in [-1, 1]; its top eigenvector D^1/2 1, eigenvalue 1, is
    known in closed form). Each cycle builds a block Krylov basis of ``block`` x ``steps`` vectors orthogonal
    to that top eigenvector (float32 products with A, float64 orthogonalisation), takes the Rayleigh-Ritz
    pair with the largest eigenvalue and stops when its residual norm is at most ``tol``; otherwise the next
    cycle restarts from the best Ritz vectors. Returns x = D^-1/2 z (float64) per graph, None where degenerate.
    """
    _check_batch(a)
    if block < 1 or steps < 1 or max_cycles < 1:
        raise ValueError("block, steps and max_cycles must be >= 1")
    deg = degenerate(a).cpu().tolist()
    keep = [i for i, flag in enumerate(deg) if not flag]
    out: list[np.ndarray | None] = [None] * a.shape[0]
    if not keep:
        return out
    af = (a if len(keep) == a.shape[0] else a[keep]).float()
    n, t = af.shape[0], af.shape[1]
    b = min(block, t - 1)
    gen = torch.Generator().manual_seed(seed)
    # Degrees exactly as the float64 row sums of the float32 matrix: entries are 1 or e = float32(eps), so
    # a float32 row sum fixes the count of ones (its rounding error is far below 1/2 while T * e < 1/2).
    eps32 = float(af.amin())
    if t * eps32 < 0.25:
        ones = ((af.sum(dim=2, dtype=torch.float32) - t * eps32) / (1.0 - eps32)).round().double()
    else:
        ones = (af == 1).sum(dim=2).double()
    s64 = (ones + (t - ones) * eps32).rsqrt().unsqueeze(1)  # D^-1/2 as (n, 1, T)
    s32 = s64.float()
    top = 1.0 / s64  # D^1/2 1: the eigenvector of M with eigenvalue 1
    top = top / top.norm(dim=2, keepdim=True)

    def times_m(v: torch.Tensor) -> torch.Tensor:  # rows of v (n, k, T) times M, M symmetric
        return (((s32 * v.float()) @ af) * s32).double()

    v = torch.randn((n, b, t), generator=gen, dtype=torch.float64).to(af.device)
    z = torch.zeros((n, t), dtype=torch.float64, device=af.device)
    done = torch.zeros(n, dtype=torch.bool, device=af.device)
    for _ in range(max_cycles):
        q = torch.cat([top, _orthonormalise(v, top, gen)], dim=1)
        mq = [times_m(q[:, 1:])]
        for _ in range(steps - 1):
            if q.shape[1] - 1 + b > t - 1:
                break
            q = torch.cat([q, _orthonormalise(mq[-1], q, gen)], dim=1)
            mq.append(times_m(q[:, -b:]))
        q, mqm = q[:, 1:], torch.cat(mq, dim=1)
        h = q @ mqm.mT
        evals, evecs = torch.linalg.eigh((h + h.mT) / 2)
        ritz = evecs.mT @ q  # (n, k, T), one Ritz vector per row
        # Rows replaced by zeros (basis exhausted) give zero Ritz vectors: rank them last.
        evals = torch.where(ritz.norm(dim=2) > 0.5, evals, torch.full_like(evals, -torch.inf))
        order = evals.argsort(dim=1, descending=True)
        best = order[:, 0]
        rows = torch.arange(n, device=af.device)
        theta, cand = evals[rows, best], ritz[rows, best]
        resid = (evecs[rows, :, best].unsqueeze(1) @ mqm).squeeze(1) - theta.unsqueeze(-1) * cand
        z = torch.where(done.unsqueeze(-1), z, cand)
        done = done | (resid.norm(dim=1) <= tol)
        if bool(done.all()):
            break
        v = ritz.gather(1, order[:, :b].unsqueeze(-1).expand(n, b, t))
    x = (s64.squeeze(1) * z).cpu().numpy()
    converged = done.cpu().tolist()
    for j, i in enumerate(keep):
        out[i] = x[j] if converged[j] else ncut_exact(a[i : i + 1])[0]
    return out
