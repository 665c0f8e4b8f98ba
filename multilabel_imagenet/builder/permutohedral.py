"""Gaussian filtering on the permutohedral lattice (Adams, Baek & Davis, Eurographics 2010), in torch.

The fully connected CRF of Kraehenbuehl & Koltun (NeurIPS 2011; pydensecrf) approximates its Gaussian and
bilateral message passing with this lattice; :mod:`crf` builds its torch CRF on this module so that it follows
the same approximation, batched and on any device. Points are given by features already divided by the
kernel's standard deviations (e.g. ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``); :meth:`Lattice.filter`
then computes, for every point i, approximately ``sum_j exp(-|f_i - f_j|^2 / 2) v_j`` (the point itself
included), in time linear in the number of points.

Steps, as in the paper and pydensecrf's ``permutohedral.cpp``: each point is lifted onto the hyperplane
``sum = 0`` of R^(d+1), scaled so that the lattice spacing matches a unit-variance Gaussian, and splatted onto
the d+1 vertices of its enclosing simplex with barycentric weights; the lattice is blurred with the kernel
[1/2, 1, 1/2] along each of its d+1 directions in turn; values are sliced back with the same weights.
Vertices are found by sorting integer codes (``torch.unique``) instead of a hash table. Points may belong to
separate groups (e.g. the images of a batch) whose lattices never touch.
"""

from __future__ import annotations

import math

import torch


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """Lift (P, d) features onto the plane sum = 0 of R^(d+1), scaled to the lattice (Adams et al., p. 5)."""
    p, d = features.shape
    i = torch.arange(d, device=features.device, dtype=features.dtype)
    scale = math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt((i + 1) * (i + 2))
    cf = features * scale
    suffix = torch.cat([cf.flip(1).cumsum(1).flip(1), cf.new_zeros(p, 1)], dim=1)  # sum_{i >= j} cf_i, j = 0..d
    suffix[:, 1:] -= (i + 1) * cf
    return suffix


def _simplex(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The enclosing simplex of each lifted point: its remainder-0 vertex, the rank of each coordinate and the
    d+1 barycentric weights (Adams et al., p. 10)."""
    p, d1 = elevated.shape
    d = d1 - 1
    rounded = torch.round(elevated / d1)
    rem0 = rounded * d1
    total = rounded.sum(1, keepdim=True).long()
    diff = elevated - rem0
    # rank[i] = #{j: diff_j > diff_i} + #{j < i: diff_j == diff_i}: the position of coordinate i in the
    # descending order, ties broken by index as in the reference implementation (a stable sort).
    order = torch.sort(diff, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d1, device=diff.device).expand(p, d1)) + total
    low, high = rank < 0, rank > d
    rank = rank + d1 * low - d1 * high
    rem0 = rem0 + d1 * low - d1 * high
    v = (elevated - rem0) / d1
    bary = elevated.new_zeros(p, d + 2)
    bary.scatter_add_(1, d - rank, v)
    bary.scatter_add_(1, d - rank + 1, -v)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return rem0.long(), rank, bary[:, :d1]


class Lattice:
    """The lattice of a set of points, built once; :meth:`filter` applies the Gaussian to values on them.

    ``features``: (P, d) float, already divided by the kernel's standard deviations. ``groups``: optional (P,)
    int64 group of each point (points of different groups never interact). Points are lifted in float32, as in
    pydensecrf (vertex assignment needs only a few significant digits).
    """

    def __init__(self, features: torch.Tensor, groups: torch.Tensor | None = None):
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"features must be a non-empty (P, d) tensor, got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or infinite values")
        p, d = features.shape
        rem0, rank, bary = _simplex(_elevate(features.to(torch.float32)))
        d1 = d + 1
        # Vertex r of the simplex: rem0 + canonical[r][rank], canonical[r][k] = r if k <= d - r else r - (d+1).
        r = torch.arange(d1, device=features.device)
        canonical = torch.where(r[None, :] <= d - r[:, None], r[:, None], r[:, None] - d1)  # [r, k]
        codes, strides = self._encode(rem0[:, :d], rank[:, :d], canonical, groups)
        self.vertices, inverse = torch.unique(codes, return_inverse=True)
        self.offsets = inverse.view(p, d1)  # [P, d+1] vertex index of each simplex corner
        self.weights = bary  # [P, d+1] float32
        m = len(self.vertices)
        # Neighbours along direction j: the key moves by -1 in every coordinate and by +d+1 more in coordinate
        # j (for j = d only the implicit last coordinate moves). Codes are linear in the key.
        step = torch.full((d1, d), -1, dtype=torch.long, device=features.device)
        step[torch.arange(d), torch.arange(d)] += d1
        deltas = (step * strides).sum(1)  # [d+1]
        self.neighbours = [n for j in range(d1) for n in self._neighbours(deltas[j])]
        self.num_points, self.num_vertices = p, m

    @staticmethod
    def _encode(
        rem0: torch.Tensor, rank: torch.Tensor, canonical: torch.Tensor, groups: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed-radix int64 codes (P * (d+1),) of (group, key) of every simplex corner, and the strides.

        A corner's key is rem0 + canonical[r][rank] (each coordinate within +-d of rem0); the radices leave room
        for the neighbours' keys (+-(d+1) more), so neighbours' codes follow by adding a constant.
        """
        d = rem0.shape[1]
        low = rem0.amin(0) - (2 * d + 1)
        radix = rem0.amax(0) - low + (2 * d + 2)
        n_groups = 1 if groups is None else int(groups.max()) + 1
        capacity = float(n_groups) * math.prod(float(x) for x in radix.tolist())
        if capacity >= 2.0**62:
            raise ValueError(
                f"lattice too large to index ({capacity:.3g} cells): filter fewer groups at a time or use larger "
                f"kernel standard deviations"
            )
        strides = torch.ones(d, dtype=torch.long, device=rem0.device)
        for k in range(d - 2, -1, -1):
            strides[k] = strides[k + 1] * radix[k + 1]
        base = ((rem0 - low) * strides).sum(1)
        if groups is not None:
            base = base + groups.long() * (strides[0] * radix[0])
        codes = base[:, None].repeat(1, canonical.shape[0])  # [P, d+1]
        for k in range(d):
            codes += canonical[:, rank[:, k]].T * strides[k]
        return codes.reshape(-1), strides

    def _neighbours(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each vertex's neighbour at code + delta and at code - delta, (M + 1,) each (M: none; row M: M).

        Codes are unique, so b is a's neighbour at +delta exactly when a is b's at -delta: one search gives both.
        """
        m = len(self.vertices)
        plus = self._find(self.vertices + delta)
        found = plus < m
        minus = torch.full((m + 1,), m, dtype=torch.long, device=plus.device)
        minus[plus[found]] = torch.arange(m, device=plus.device)[found]
        return torch.cat([plus, plus.new_full((1,), m)]), minus

    def _find(self, codes: torch.Tensor) -> torch.Tensor:
        """Index of each code among the vertices, or the dummy index M where there is no such vertex."""
        pos = torch.searchsorted(self.vertices, codes).clamp_(max=len(self.vertices) - 1)
        return torch.where(self.vertices[pos] == codes, pos, len(self.vertices))

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Splat (P, C) values, blur, slice: the Gaussian-filtered (P, C) values (float32)."""
        if values.ndim != 2 or values.shape[0] != self.num_points:
            raise ValueError(f"values must be ({self.num_points}, C), got {tuple(values.shape)}")
        values = values.to(torch.float32)
        (p, d1), c = self.offsets.shape, values.shape[1]
        corners = self.offsets.reshape(-1)
        grid = values.new_zeros(self.num_vertices + 1, c)  # row M stays zero
        grid.index_add_(0, corners, (self.weights[:, :, None] * values[:, None, :]).reshape(-1, c))
        for j in range(d1):
            n1, n2 = self.neighbours[2 * j], self.neighbours[2 * j + 1]
            grid = grid + 0.5 * (grid.index_select(0, n1) + grid.index_select(0, n2))
        out = torch.einsum("pr,prc->pc", self.weights, grid.index_select(0, corners).view(p, d1, c))
        # pydensecrf's constant alpha = 1 / (1 + 2^-d) rescales the result; symmetric normalisation cancels it.
        return out / (1.0 + 2.0 ** (1 - d1))
