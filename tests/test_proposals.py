"""Proposals: COCO RLE round trips, size/box/area, resizing, cross-configuration deduplication."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from multilabel_imagenet.builder import proposals
from multilabel_imagenet.builder.configs import DEFAULT_DEDUP_IOU


def random_mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), bool)
    for _ in range(3):
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
    m ^= rng.random((h, w)) < 0.05  # speckle: many runs
    return m


@pytest.mark.parametrize(("h", "w", "seed"), [(37, 91, 0), (120, 33, 1), (1, 1, 2), (64, 64, 3), (5, 200, 4)])
def test_rle_round_trips_exactly_with_height_width_box_area(h, w, seed):
    m = random_mask(h, w, seed)
    m[0, 0] = True  # never empty
    p = proposals.encode(m, "cfg")
    assert p is not None and p.size == (h, w) and (p.height, p.width) == (h, w)
    assert np.array_equal(p.decode(), m)
    assert p.area == int(m.sum())
    ys, xs = np.nonzero(m)
    assert p.bbox == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    # The stored dict is a valid pycocotools RLE with size [h, w].
    d = p.to_dict()
    assert d["size"] == [h, w] and isinstance(d["counts"], str) and d["source"] == "cfg"
    rle = {"size": d["size"], "counts": d["counts"].encode("ascii")}
    assert np.array_equal(mask_utils.decode(rle).astype(bool), m)


def test_empty_mask_is_no_proposal_and_bad_shape_raises():
    assert proposals.encode(np.zeros((4, 5), bool), "cfg") is None
    with pytest.raises(ValueError, match="2-D"):
        proposals.encode(np.zeros((2, 3, 4), bool), "cfg")


def test_resize_mask_to_original_size():
    m = np.zeros((480, 480), bool)
    m[100:300, 50:200] = True
    out = proposals.resize_mask(m, 375, 500)  # height, width
    assert out.shape == (375, 500)
    ys, xs = np.nonzero(out)
    assert abs(ys.min() - 100 * 375 / 480) <= 1.5 and abs(xs.max() + 1 - 200 * 500 / 480) <= 1.5
    assert not proposals.resize_mask(np.zeros((10, 10), bool), 7, 9).any()


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int, source: str) -> proposals.Proposal:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    p = proposals.encode(m, source)
    assert p is not None
    return p


def test_dedupe_removes_cross_configuration_near_duplicates_keeping_the_first():
    a = _box(50, 60, 10, 40, 10, 40, "A")
    a2 = _box(50, 60, 10, 40, 10, 39, "B")  # IoU 29/30 with a
    b = _box(50, 60, 0, 5, 0, 60, "B")
    c = _box(50, 60, 10, 40, 10, 40, "A")  # same config: never compared
    out = proposals.merge([[a, c], [a2, b]])
    assert [p.source for p in out] == ["A", "A", "B"] and out[2] == b
    # Configurable: a threshold above their IoU keeps both; the default is documented in configs.
    assert len(proposals.dedupe([a, a2], iou_threshold=0.99)) == 2
    assert DEFAULT_DEDUP_IOU < 29 / 30
    assert proposals.dedupe([]) == []


def test_dedupe_rejects_mixed_sizes_and_bad_threshold():
    with pytest.raises(ValueError, match="share one size"):
        proposals.dedupe([_box(10, 10, 0, 5, 0, 5, "A"), _box(10, 12, 0, 5, 0, 5, "B")])
    with pytest.raises(ValueError, match="iou_threshold"):
        proposals.dedupe([], iou_threshold=-0.1)
