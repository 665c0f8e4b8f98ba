"""Dense-CRF refinement (real pydensecrf, and the torch CRF against it) and the refinement self-check.

pydensecrf is the optional extra ``.[pydensecrf]``: the tests of the reference skip where it is absent."""

from __future__ import annotations

import importlib.util
import pickle
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from multilabel_imagenet.builder import crf, maskcut, synthetic
from multilabel_imagenet.builder.configs import CRFParams
from multilabel_imagenet.builder.permutohedral import Lattice

needs_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None,
    reason="pydensecrf2 (the optional extra: pip install -e '.[pydensecrf]') is not installed",
)


def disc_image(size: int = 96, patch: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image with a saturated disc whose edge does not follow the patch grid, the disc, and the blocky
    patch-level mask (patches at least half covered) upsampled to pixels."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 45.3) ** 2 + (xx - 50.7) ** 2 < 27.5**2
    rng = np.random.default_rng(0)
    image = np.where(disc[..., None], [220, 40, 30], [70, 90, 80]) + rng.integers(-8, 9, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    g = size // patch
    coverage = disc.reshape(g, patch, g, patch).mean(axis=(1, 3))
    (raw,) = maskcut.full_resolution([coverage >= 0.5], (size, size))
    return image, disc, raw


@needs_pydensecrf
def test_crf_follows_an_image_edge_the_patch_grid_misses():
    image, disc, raw = disc_image()
    out = crf.dense_crf(image, raw)
    assert out.shape == raw.shape and out.dtype == bool
    assert (out != raw).sum() > 50
    assert crf.mask_iou(out, disc) > crf.mask_iou(raw, disc) + 0.03
    refined = crf.refine(image, raw, use_crf=True)
    assert refined is not None and crf.mask_iou(refined, raw) >= crf.SELF_CHECK_IOU


def test_the_pydensecrf_backend_without_its_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import pydensecrf now raises ImportError
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image, _, raw = disc_image()
    install = r"pip install 'multilabel-imagenet\[pydensecrf\]'"
    with pytest.raises(crf.BackendUnavailableError, match=rf"crf_backend 'pydensecrf' .* Install it with: {install}"):
        crf.dense_crf(image, raw)
    with pytest.raises(crf.BackendUnavailableError, match="or use crf_backend 'torch', the default"):
        crf.refine(image, raw, use_crf=True)
    with pytest.raises(crf.BackendUnavailableError):
        crf.check_backend("pydensecrf")
    crf.check_backend("torch")
    assert crf.refine(image, raw, use_crf=False) is not None  # no CRF, no pydensecrf needed
    with pytest.raises(ValueError, match="uint8"):  # bad input is still named first
        crf.dense_crf(image.astype(np.float32), raw)
    try:  # the error crosses a process pool (crf_workers) intact
        crf.check_backend("pydensecrf")
    except crf.BackendUnavailableError as err:
        assert str(pickle.loads(pickle.dumps(err))) == str(err)
    assert isinstance(crf.BackendUnavailableError("x"), ImportError | ValueError)  # the build CLI reports ValueError


def test_published_parameters_are_the_defaults():
    p = CRFParams()
    assert (p.gaussian_sxy, p.gaussian_compat) == (3, 7)
    assert (p.bilateral_sxy, p.bilateral_srgb, p.bilateral_compat, p.iterations) == (50, 5, 10, 10)


def test_without_crf_holes_are_filled_and_the_self_check_drops_rings():
    m = np.zeros((40, 40), bool)
    m[5:35, 5:35] = True
    m[15:25, 15:25] = False  # hole of 100 in 900 - 100 pixels
    image = np.zeros((40, 40, 3), np.uint8)
    filled = crf.refine(image, m, use_crf=False)
    assert filled is not None and filled.sum() == 900
    ring = np.zeros((40, 40), bool)
    ring[2:38, 2:38] = True
    ring[4:36, 4:36] = False  # thin ring: filling it more than doubles it, IoU < 0.5
    assert crf.refine(image, ring, use_crf=False) is None
    assert crf.refine(image, np.zeros((40, 40), bool), use_crf=True) is None


def test_fill_holes_equals_scipy():
    rng = np.random.default_rng(0)
    cases = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.zeros((1, 1), bool), np.ones((1, 1), bool)]
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7], ring[3:6, 3:6] = True, False
    diagonal_gap = ring.copy()
    diagonal_gap[2, 2] = False  # a hole still: the background is 4-connected
    open_ring = ring.copy()
    open_ring[4, 2] = False  # a channel to the outside: no hole
    edge_ring = np.zeros((6, 6), bool)
    edge_ring[0:4, 0:4], edge_ring[1:3, 1:3] = True, False  # a hole next to the image border
    cases += [ring, diagonal_gap, open_ring, edge_ring]
    for _ in range(2000):
        m = rng.random(tuple(rng.integers(1, 30, 2))) < rng.random()
        cases.append(ndimage.binary_dilation(m, iterations=int(rng.integers(1, 3))) if rng.random() < 0.4 else m)
    for m in cases:
        np.testing.assert_array_equal(crf.fill_holes(m), ndimage.binary_fill_holes(m))
    assert crf.fill_holes(ring)[4, 4] and crf.fill_holes(diagonal_gap)[4, 4] and not crf.fill_holes(open_ring)[4, 4]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        crf.dense_crf(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="differs"):
        crf.dense_crf(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), bool))


# --- the torch CRF and its permutohedral lattice -------------------------------------------------------------


def test_lattice_approximates_the_normalised_gaussian_filter():
    g = torch.Generator().manual_seed(0)
    points, values = torch.rand(400, 2, generator=g) * 6, torch.rand(400, 3, generator=g)
    lattice = Lattice(points)
    ours = lattice.filter(values) / lattice.filter(torch.ones(400, 1))
    k = torch.exp(-0.5 * torch.cdist(points.double(), points.double()) ** 2)
    exact = (k @ values.double()) / k.sum(1, keepdim=True)
    assert (ours - exact).abs().max() < 0.03
    assert (ours - exact).abs().mean() < 0.005 < exact.std() / 4


def test_lattice_groups_never_interact():
    g = torch.Generator().manual_seed(1)
    points = torch.rand(300, 5, generator=g) * 4
    values = torch.rand(600, 2, generator=g)
    both = Lattice(torch.cat([points, points]), torch.arange(2).repeat_interleave(300)).filter(values)
    alone = Lattice(points)
    assert torch.allclose(both[:300], alone.filter(values[:300]), atol=1e-6)
    assert torch.allclose(both[300:], alone.filter(values[300:]), atol=1e-6)


def test_lattice_rejects_bad_points():
    with pytest.raises(ValueError, match="non-empty"):
        Lattice(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="NaN"):
        Lattice(torch.tensor([[0.0, float("nan")]]))


@needs_pydensecrf
def test_torch_crf_equals_pydensecrf_on_the_disc():
    image, disc, raw = disc_image()
    ours = crf.dense_crf_torch(torch.from_numpy(image)[None], torch.from_numpy(raw)[None, None])[0, 0].numpy()
    assert crf.mask_iou(ours, crf.dense_crf(image, raw)) > 0.99
    assert crf.mask_iou(ours, disc) > crf.mask_iou(raw, disc) + 0.03


@needs_pydensecrf
def test_torch_crf_agrees_with_pydensecrf_on_photographs_and_scenes():
    """The agreement benchmarks/crf_agreement.py records (it checks nothing), pinned here on a smaller set."""
    pytest.importorskip("skimage", reason="scikit-image (dev extra) ships the photographs")
    cases = synthetic.crf_cases(3, ("astronaut", "coffee", "retina", "immunohistochemistry"), size=256)
    ious = []
    for _, image, masks in cases:
        ours = crf.dense_crf_torch(torch.from_numpy(image)[None], torch.from_numpy(np.stack(masks))[None])[0]
        for m, o in zip(masks, ours.numpy(), strict=True):
            reference = crf.dense_crf(image, m)
            ious.append(1.0 if not (reference.any() or o.any()) else crf.mask_iou(reference, o))
    assert len(ious) >= 14
    assert np.mean(ious) >= 0.95 and min(ious) >= 0.8, ious


def test_torch_crf_batches_images_and_masks_independently():
    image, _, raw = disc_image()
    other = np.ascontiguousarray(image[::-1, ::-1])
    masks = torch.from_numpy(np.stack([raw, np.zeros_like(raw)]))
    images = torch.from_numpy(np.stack([image, other]))
    batched = crf.dense_crf_torch(images, torch.stack([masks, masks.flip(0)]))
    one = crf.dense_crf_torch(images[:1], masks[:1, None])[0, 0]
    assert torch.equal(batched[0, 0], one)
    assert not batched[0, 1].any() and not batched[1, 0].any()  # padding stays empty
    assert torch.equal(batched[1, 1], crf.dense_crf_torch(images[1:], masks[None, :1])[0, 0])


def test_torch_crf_reuses_the_gaussian_lattice_of_a_size_without_changing_results():
    image, _, raw = disc_image()
    images, masks = torch.from_numpy(image)[None], torch.from_numpy(raw)[None, None]
    crf._gaussian.cache_clear()
    cold = crf.dense_crf_torch(images, masks)
    crf.dense_crf_torch(torch.from_numpy(image[:-8, :-4].copy())[None], masks[..., :-8, :-4])  # another size
    warm = crf.dense_crf_torch(images, masks)
    info = crf._gaussian.cache_info()
    assert torch.equal(cold, warm) and cold.any()
    assert (info.misses, info.hits) == (2, 1)  # built once per size, reused for the same size


def test_torch_crf_bad_inputs_raise():
    with pytest.raises(ValueError, match="uint8"):
        crf.dense_crf_torch(torch.zeros(1, 4, 4, 3), torch.zeros(1, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="B x K x H x W"):
        crf.dense_crf_torch(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), torch.zeros(1, 4, 5, dtype=torch.bool))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_crf_on_cuda_matches_the_cpu():
    image, _, raw = disc_image(192)
    images, masks = torch.from_numpy(image)[None], torch.from_numpy(raw)[None, None]
    cpu = crf.dense_crf_torch(images, masks)
    cuda = crf.dense_crf_torch(images.cuda(), masks.cuda())
    assert cuda.is_cuda and crf.mask_iou(cpu.numpy()[0, 0], cuda.cpu().numpy()[0, 0]) > 0.99
