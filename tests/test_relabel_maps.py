import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multilabel_imagenet.builder import relabel_maps, synthetic
from multilabel_imagenet.builder.relabel_maps import RelabelMapError, Sample
from multilabel_imagenet.builder.synthetic import Scene, SceneObject


def _random_map(rng):
    logits = np.sort(rng.normal(3, 3, size=(5, 15, 15)), axis=0)[::-1]
    indices = np.stack([rng.choice(1000, 5, replace=False) for _ in range(225)], 1).reshape(5, 15, 15)
    return np.stack([logits, indices]).astype(np.float32)


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_read_map_validates(tmp_path):
    good = _random_map(np.random.default_rng(0))
    path = _save(tmp_path, "good.pt", torch.from_numpy(good).half())  # maps may be stored in float16
    np.testing.assert_allclose(relabel_maps.read_map(path), torch.from_numpy(good).half().float().numpy())
    bad_indices = good.copy()
    bad_indices[1, 0, 3, 4] = 1000
    non_integer = good.copy()
    non_integer[1, 2, 0, 0] = 3.5
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    cases = {
        "missing.pt": None,
        "shape.pt": torch.zeros(2, 5, 14, 14),
        "range.pt": torch.from_numpy(bad_indices),
        "fraction.pt": torch.from_numpy(non_integer),
        "nan.pt": torch.from_numpy(nan),
        "dict.pt": {"map": torch.from_numpy(good)},
        "object.pt": Sample((1,), 2, 0.5),  # arbitrary pickled object: refused by weights_only
    }
    reasons = {
        "missing.pt": "not found",
        "shape.pt": r"expected shape \[2, 5, 15, 15\], found \[2, 5, 14, 14\]",
        "range.pt": "class indices must be integers",
        "fraction.pt": "class indices must be integers",
        "nan.pt": "NaN",
        "dict.pt": "expected a tensor, found dict",
        "object.pt": "cannot load as a tensor file",
    }
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    cases["garbage.pt"], reasons["garbage.pt"] = None, "cannot load"
    for name, obj in cases.items():
        if obj is not None:
            _save(tmp_path, name, obj)
        with pytest.raises(RelabelMapError, match=reasons[name]) as info:
            relabel_maps.read_map(tmp_path / name)
        assert info.value.path.endswith(name)


def test_map_path():
    assert relabel_maps.map_path("/maps", "n01440764/n01440764_10026.JPEG").as_posix() == (
        "/maps/n01440764/n01440764_10026.pt"
    )


def test_dense_logits_scatter():
    label_map = _random_map(np.random.default_rng(1))
    dense = relabel_maps.dense_logits(label_map)
    for r, c in [(0, 0), (3, 11), (14, 14)]:
        for k in range(5):
            assert dense[int(label_map[1, k, r, c]), r, c] == label_map[0, k, r, c]
        assert np.count_nonzero(dense[:, r, c]) == 5


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_scores_equal_brute_force_upsampling(mode):
    rng = np.random.default_rng(2)
    label_map = _random_map(rng)
    h, w = 97, 130
    masks = np.zeros((3, h, w), bool)
    masks[0, 10:50, 20:90] = True
    masks[1] = rng.random((h, w)) < 0.3
    masks[2, 60, 100] = True  # a single pixel, far smaller than a cell: it must not vanish
    dense = torch.from_numpy(relabel_maps.dense_logits(label_map))[None]
    torch_mode = {"bilinear": "bilinear", "nearest": "nearest-exact"}[mode]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    upsampled = F.interpolate(dense.double(), size=(h, w), mode=torch_mode, **kwargs)[0]
    expected = torch.stack([torch.softmax(upsampled[:, m].mean(1), 0) for m in torch.from_numpy(masks)]).numpy()
    got = relabel_maps.score_proposals(label_map, masks, mode)
    np.testing.assert_allclose(got, expected, atol=2e-6)
    weights = relabel_maps.mask_cell_weights(masks, mode)
    np.testing.assert_allclose(weights.sum((1, 2)), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"masks \[0\] are empty"):
        relabel_maps.score_proposals(label_map, np.zeros((1, h, w), bool))


def test_orientation_with_an_off_centre_object():
    # Label 949 fills the bottom-left; class 340 sits in the top-right corner (rows 0-49, columns 200-299).
    big, small = np.zeros((150, 300), bool), np.zeros((150, 300), bool)
    big[60:, :180] = True
    small[:50, 200:] = True
    scene = Scene("x", np.zeros((150, 300, 3), np.uint8), [SceneObject(949, big), SceneObject(340, small)])
    label_map = synthetic.relabel_map(scene, noise=0.0)
    transposed = np.zeros_like(small)
    transposed[100:, :100] = True  # where the object would be if rows and columns were swapped
    probs = relabel_maps.score_proposals(label_map, np.stack([small, big, transposed]))
    assert probs[0].argmax() == 340 and probs[0, 340] > 0.99
    assert probs[1].argmax() == 949 and probs[1, 949] > 0.99
    assert probs[2, 340] < 0.01


def test_select_paper_and_authors_modes():
    probs = np.full((4, 1000), 1e-4, np.float32)
    probs[0, 5] = 0.9  # confident on the image label 5
    probs[1, 5] = 0.75  # not above tau_sel (paper: "exceed")
    probs[2, 7] = 0.8  # confident on another class
    probs[3, 7] = 0.95
    paper = relabel_maps.select_samples(probs, label=5)
    assert paper == [Sample((0,), 5, pytest.approx(0.9))]
    authors = relabel_maps.select_samples(probs, label=5, mode="authors")
    assert [(s.mask_indices, s.class_index) for s in authors] == [((0, 1), 5), ((2, 3), 7)]
    assert authors[1].relabel_prob == pytest.approx(0.95)
    none_on_label = relabel_maps.select_samples(probs[2:], label=5, mode="authors", add_full_image=True)
    assert none_on_label[-1].full_image and none_on_label[-1].class_index == 5
    assert relabel_maps.select_samples(probs[2:], label=5) == []
    with pytest.raises(ValueError, match="selection mode"):
        relabel_maps.select_samples(probs, 5, mode="best")


def test_iter_selections_records_missing_maps_and_goes_on(tmp_path):
    scenes = [synthetic.make_scene(i) for i in range(3)]
    root = tmp_path / "maps"
    items = []
    for k, scene in enumerate(scenes):
        wnid_path = f"{scene.image_id.split('_')[0]}/{scene.image_id}.JPEG"
        if k != 1:  # the second image has no map
            path = relabel_maps.map_path(root, wnid_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(torch.from_numpy(synthetic.relabel_map(scene)), path)
        items.append((scene.image_id, wnid_path, scene.label, np.stack([o.mask for o in scene.objects])))
    results = list(relabel_maps.iter_selections(items, root))
    assert [r[0] for r in results] == [s.image_id for s in scenes]
    assert results[1][1] == [] and "not found" in results[1][2].reason
    for (_, samples, failure), scene in zip(results[::2], scenes[::2], strict=True):
        assert failure is None
        primary = max(range(len(scene.objects)), key=lambda i: scene.objects[i].area)
        assert [s.mask_indices for s in samples] == [(primary,)], "the ground-truth object of the label is chosen"


def test_linear_resize_matrix_is_cv2_inter_linear_by_hand():
    # 6 -> 4: source coordinates (d + 0.5) * 1.5 - 0.5 = 0.25, 1.75, 3.25, 4.75.
    expected = np.zeros((4, 6))
    expected[0, [0, 1]] = [0.75, 0.25]
    expected[1, [1, 2]] = [0.25, 0.75]
    expected[2, [3, 4]] = [0.75, 0.25]
    expected[3, [4, 5]] = [0.25, 0.75]
    np.testing.assert_allclose(relabel_maps.linear_resize_matrix(6, 4), expected)
    # 3 -> 4 (enlarging): -0.125 reads pixel 0 alone, 2.125 (past the last pixel) pixel 2 alone.
    expected = np.array([[1, 0, 0], [0.375, 0.625, 0], [0, 0.625, 0.375], [0, 0, 1]])
    np.testing.assert_allclose(relabel_maps.linear_resize_matrix(3, 4), expected)
    # 30 -> 15 is the 2 x 2 block mean (cv2 switches to INTER_AREA there: the same numbers).
    np.testing.assert_allclose(relabel_maps.linear_resize_matrix(30, 15), np.kron(np.eye(15), [[0.5, 0.5]]))


def test_cv2_linear_scoring_weights_cells_by_the_resized_mask():
    rng = np.random.default_rng(3)
    label_map = _random_map(rng)
    h, w = 45, 60  # 3 and 4 pixels per cell: rows sample 1.0 + 3r, columns 1.5 + 4c
    masks = np.zeros((2, h, w), bool)
    masks[0, 0:6, 0:12] = True  # rows 0-5 hold samples 1 and 4 (cells 0, 1); columns 0-11 cells 0-2
    masks[1, 0, 0] = True  # between the sample points: vanishes
    resized = np.zeros((15, 15))
    resized[:2, :3] = 1.0  # by hand: every sample of cells (0-1, 0-2) reads inside the mask
    logits = np.einsum("rc,krc->k", resized / resized.sum(), relabel_maps.dense_logits(label_map))
    expected = torch.softmax(torch.from_numpy(logits), 0).numpy()
    probs = relabel_maps.score_proposals(label_map, masks, "cv2_linear")
    np.testing.assert_allclose(probs[0], expected, atol=1e-6)
    assert not probs[1].any() and relabel_maps.vanished(probs) == [1]
    assert relabel_maps.select_samples(probs, int(probs[0].argmax()), tau_sel=0.0)[0].mask_indices == (0,)


def test_vanished_masks_are_recorded_and_the_others_selected(tmp_path):
    scene = synthetic.make_scene(0)
    path = f"{scene.image_id.split('_')[0]}/{scene.image_id}.JPEG"
    target = relabel_maps.map_path(tmp_path, path)
    target.parent.mkdir(parents=True)
    torch.save(torch.from_numpy(synthetic.relabel_map(scene)), target)
    masks = np.stack([o.mask for o in scene.objects] + [np.zeros_like(scene.objects[0].mask)])
    masks[-1, 0, 0] = True
    ((_, samples, failure),) = relabel_maps.iter_selections(
        [(scene.image_id, path, scene.label, masks)], tmp_path, resample="cv2_linear"
    )
    assert failure is not None and f"proposals [{len(masks) - 1}] vanish" in failure.reason
    assert samples and all(len(masks) - 1 not in s.mask_indices for s in samples)


def _malformed_maps(good: torch.Tensor) -> dict[str, object]:
    """Maps of the wrong dtype, layout or shape, each built here (beside shape.pt of test_read_map_validates)."""
    huge = good.double().clone()
    huge[0] *= 1e300  # finite in float64, infinite once cast to float32
    rounded = good.clone()
    rounded[1, 0, 0, 0] = 999.0  # bfloat16 rounds 999 to 1000
    return {
        "sparse.pt": good.to_sparse(),
        "sparse_csr.pt": good.reshape(150, 15).to_sparse_csr(),
        "meta.pt": torch.empty(2, 5, 15, 15, device="meta"),
        "complex.pt": good.to(torch.complex64),
        "bool.pt": good > 0,
        "int64.pt": good.long(),
        "uint8.pt": good.to(torch.uint8),
        "float8.pt": good.to(torch.float8_e4m3fn),
        "huge.pt": huge,
        "bfloat16.pt": rounded.bfloat16(),
        "scalar.pt": torch.tensor(1.0),
        "flat.pt": good.flatten(),
        "empty.pt": torch.zeros(0),
        "batched.pt": good[None],
        "swapped.pt": good.permute(1, 0, 2, 3),
        "list.pt": [good],
    }


MALFORMED_REASONS = {
    "sparse.pt": "expected a dense tensor, found a sparse_coo one",
    "sparse_csr.pt": "expected a dense tensor, found a sparse_csr one",
    "meta.pt": "holds no values",
    "complex.pt": "expected a tensor of float16, bfloat16, float32, float64, found complex64",
    "bool.pt": "found bool",
    "int64.pt": "found int64",
    "uint8.pt": "found uint8",
    "float8.pt": "found float8_e4m3fn",
    "huge.pt": r"beyond the float32 range \(largest 1\.\d+e\+30\d\)",
    "bfloat16.pt": r"class indices must be integers in 0..999; \d+ are not, e.g. 1000 at \[1, 0, 0, 0\]",
    "scalar.pt": r"expected shape \[2, 5, 15, 15\], found \[\]",
    "flat.pt": r"found \[2250\]",
    "empty.pt": r"found \[0\]",
    "batched.pt": r"found \[1, 2, 5, 15, 15\]",
    "swapped.pt": r"found \[5, 2, 15, 15\]",
    "list.pt": "expected a tensor, found list",
}


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants", "ignore:Sparse CSR tensor support")
def test_read_map_refuses_wrong_dtypes_layouts_and_shapes(tmp_path):
    good = torch.from_numpy(_random_map(np.random.default_rng(4)))
    for name, obj in _malformed_maps(good).items():
        with pytest.raises(RelabelMapError, match=MALFORMED_REASONS[name]):
            relabel_maps.read_map(_save(tmp_path, name, obj))


def test_maps_saved_with_requires_grad_are_read_for_their_values(tmp_path):
    good = torch.from_numpy(_random_map(np.random.default_rng(5)))
    saved = {"grad.pt": good.clone().requires_grad_(True), "param.pt": torch.nn.Parameter(good.clone())}
    for name, obj in saved.items():
        np.testing.assert_array_equal(relabel_maps.read_map(_save(tmp_path, name, obj)), good.numpy())
    np.testing.assert_array_equal(relabel_maps.read_map(_save(tmp_path, "f64.pt", good.double())), good.numpy())


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants", "ignore:Sparse CSR tensor support")
def test_select_records_every_malformed_map_and_goes_on(tmp_path):
    scene = synthetic.make_scene(0)
    good = torch.from_numpy(synthetic.relabel_map(scene))
    masks = np.stack([o.mask for o in scene.objects])
    maps = {"good.pt": good, "grad.pt": good.clone().requires_grad_(True), **_malformed_maps(good)}
    items = []
    for name, obj in maps.items():
        path = f"n01440764/{name.removesuffix('.pt')}.JPEG"
        target = relabel_maps.map_path(tmp_path, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, target)
        items.append((name, path, scene.label, masks))
    results = {
        image_id: (samples, failure) for image_id, samples, failure in relabel_maps.iter_selections(items, tmp_path)
    }
    assert list(results) == [i[0] for i in items]  # every image, in order: none aborts the run
    for name in ("good.pt", "grad.pt"):
        samples, failure = results[name]
        assert failure is None and samples
    for name, reason in MALFORMED_REASONS.items():
        samples, failure = results[name]
        assert samples == [] and failure is not None and failure.image_id == name
        assert re.search(reason, failure.reason), (name, failure.reason)
