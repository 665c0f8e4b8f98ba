import json

import numpy as np
import pytest
import torch

from multilabel_imagenet.builder import backbones, labeler, labeler_online, labeler_train
from multilabel_imagenet.builder.labeler import LabelerConfig
from multilabel_imagenet.builder.labeler_train import FeatureCache


def test_defaults_follow_the_paper():
    c = LabelerConfig()
    assert (c.backbone, c.input_size, c.hidden, c.patch_drop) == ("vit_large_patch16_dinov3.lvd1689m", 512, 1024, 0.25)
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay, c.warmup_epochs) == (300, 512, 0.1, 0.9, 1e-4, 5)
    with pytest.raises(ValueError, match="unknown labeler settings"):
        LabelerConfig.from_dict({"lr": 0.1, "learning_rate": 0.2})


def test_head_architecture():
    head = labeler.LabelerHead(64, hidden=32, num_classes=10, dropout=0.1)
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds == ["Dropout", "Linear", "GELU", "Dropout", "Linear", "GELU", "Linear"]
    assert head(torch.zeros(3, 64)).shape == (3, 10)


def test_masks_to_grid():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, :32, :32] = True  # exactly the top-left quarter of a 4 x 4 grid
    masks[1, 40, 50] = True  # one pixel: keeps its best-covered patch
    grid = labeler.masks_to_grid(masks, (4, 4))
    assert grid[0].tolist() == [[True, True, False, False]] * 2 + [[False] * 4] * 2
    assert grid[1].sum() == 1 and grid[1, 2, 3]
    assert not grid[2].any()
    assert labeler.masks_to_grid(torch.zeros(0, 8, 8), (4, 4)).shape == (0, 4, 4)


def test_drop_patches_drops_a_quarter_of_the_foreground():
    grid = torch.zeros(4, 8, 8, dtype=torch.bool)
    grid[0, :4, :4] = True  # 16 patches -> 4 dropped
    grid[1, 0, :3] = True  # 3 patches -> 0 dropped (floor)
    grid[2, 5, 5] = True  # a single patch is always kept
    g = torch.Generator().manual_seed(0)
    kept = labeler.drop_patches(grid, 0.25, g)
    assert kept.flatten(1).sum(1).tolist() == [12, 3, 1, 0]
    assert not (kept & ~grid).any(), "only foreground patches are touched"
    again = labeler.drop_patches(grid, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(kept, again)
    assert torch.equal(labeler.drop_patches(grid, 0.0), grid)


def test_masked_mean():
    feats = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    grid = torch.zeros(1, 2, 3, dtype=torch.bool)
    grid[0, 0, 1] = grid[0, 1, 2] = True
    np.testing.assert_allclose(labeler.masked_mean(feats, grid)[0], (feats[0, 1] + feats[1, 2]) / 2)


def test_learning_rate_schedule():
    c = LabelerConfig(epochs=10, warmup_epochs=2, lr=0.1)
    lrs = [labeler_train.learning_rate(c, s, 5) for s in range(50)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False)), "linear warm-up"
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)), "cosine decay"
    assert lrs[10] == pytest.approx(0.1) and lrs[-1] < 0.001


def _clusters(n_per_class=40, dim=16, n_classes=5, views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 3
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    feats = centres[labels][:, None] + torch.randn(len(labels), views, dim, generator=g)
    return FeatureCache(feats.half(), labels)


def test_train_from_cache_learns_logs_and_checkpoints(tmp_path):
    cache = _clusters()
    cache.save(tmp_path / "cache.safetensors")
    cache = FeatureCache.load(tmp_path / "cache.safetensors")
    assert cache.features.dtype == torch.float16
    config = LabelerConfig(epochs=15, warmup_epochs=1, batch_size=32, hidden=32, lr=0.05)
    ckpt, log = tmp_path / "head.safetensors", tmp_path / "log.jsonl"
    head = labeler_train.train_from_cache(cache, config, num_classes=5, checkpoint=ckpt, log=log, progress=False)
    classes_, scores = labeler.top_k(head, cache.features[:, 0].float(), k=3)
    assert (classes_[:, 0] == cache.labels.numpy()).mean() > 0.95
    assert classes_.dtype == np.int16 and scores.dtype == np.float32 and np.all(np.diff(scores, axis=1) <= 0)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 16)) and lines[-1]["loss"] < lines[0]["loss"]
    loaded, loaded_config, epoch, optim = labeler.load_checkpoint(ckpt)
    assert loaded_config == config and epoch == 15 and optim
    for a, b in zip(loaded.state_dict().values(), head.state_dict().values(), strict=True):
        assert torch.equal(a, b.cpu())


def test_resume_gives_the_same_head_as_an_uninterrupted_run(tmp_path):
    cache = _clusters(n_per_class=10)
    config = LabelerConfig(epochs=4, warmup_epochs=1, batch_size=16, hidden=16)
    full = labeler_train.train_from_cache(cache, config, num_classes=5, progress=False)

    ckpt = tmp_path / "head.safetensors"
    original_fit = labeler_train.fit

    def interrupted_fit(head, cfg, epoch_batches, steps, **kw):
        def stop_at_two(epoch):
            if epoch == 2:
                raise KeyboardInterrupt
            return epoch_batches(epoch)

        return original_fit(head, cfg, stop_at_two, steps, **kw)

    labeler_train.fit = interrupted_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            labeler_train.train_from_cache(
                cache, config, num_classes=5, checkpoint=ckpt, progress=False, checkpoint_seconds=0
            )
    finally:
        labeler_train.fit = original_fit
    assert labeler.load_checkpoint(ckpt)[2] == 2
    resumed = labeler_train.train_from_cache(cache, config, num_classes=5, checkpoint=ckpt, resume=True, progress=False)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = LabelerConfig(epochs=5, warmup_epochs=1, batch_size=16, hidden=16)
    with pytest.raises(ValueError, match="different configuration"):
        labeler_train.train_from_cache(cache, other, num_classes=5, checkpoint=ckpt, resume=True, progress=False)


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a labeler checkpoint"):
        labeler.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        labeler.load_checkpoint(tmp_path / "missing.safetensors")


def test_build_feature_cache_pools_samples():
    feats = torch.zeros(4, 4, 2)
    feats[:2, :2] = torch.tensor([1.0, 0.0])  # object A, top-left quarter
    feats[2:, 2:] = torch.tensor([0.0, 1.0])  # object B, bottom-right quarter
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, :16, :16] = True
    masks[1, 16:, 16:] = True
    config = LabelerConfig(cache_views=3, patch_drop=0.25)
    cache = labeler_train.build_feature_cache([(feats, masks, [((0,), 7), ((0, 1), 9), ((), 3)])], config)
    assert cache.features.shape == (3, 3, 2) and cache.labels.tolist() == [7, 9, 3]
    assert torch.allclose(cache.features[0].float(), torch.tensor([1.0, 0.0]))
    assert torch.allclose(cache.features[1].float().sum(1), torch.ones(3), atol=1e-3), "union of both masks"
    counts = cache.features[2].float() * 12  # a full-image sample keeps 12 of 16 patches per view
    assert torch.allclose(counts, counts.round(), atol=0.01) and not torch.equal(counts[0], counts[1])
    clean = labeler_train.build_feature_cache([(feats, masks, [((), 3)])], LabelerConfig(cache_views=1, patch_drop=0))
    assert torch.allclose(clean.features[0, 0].float(), torch.tensor([0.25, 0.25])), "full image = global mean"
    with pytest.raises(ValueError, match="no training samples"):
        labeler_train.build_feature_cache([(feats, masks, [])], config)


def test_label_image_outputs_top_k():
    torch.manual_seed(0)
    head = labeler.LabelerHead(8, 16, 1000)
    feats = torch.randn(4, 4, 8)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, :20] = True
    masks[1, 20:, 20:] = True
    out = labeler.label_image(head, feats, masks, LabelerConfig(top_k=10))
    assert out.mask_classes.shape == (2, 10) and out.mask_scores.shape == (2, 10)
    assert out.global_classes.shape == (10,) and out.mask_classes.dtype == np.int16
    probs = torch.softmax(head(labeler.masked_mean(feats, labeler.masks_to_grid(torch.from_numpy(masks), (4, 4)))), 1)
    np.testing.assert_allclose(out.mask_scores[:, 0], probs.max(1).values.detach().numpy(), rtol=1e-5)
    empty = labeler.label_image(head, feats, np.zeros((0, 40, 40), bool), LabelerConfig(top_k=5))
    assert empty.mask_classes.shape == (0, 5) and empty.global_scores.shape == (5,)


def _pair(image, mask):
    from torchvision import tv_tensors

    return tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask)[None])


def test_joint_augmentation_keeps_mask_aligned(monkeypatch):
    torch.manual_seed(0)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:40, 30:70] = 1
    image = np.repeat(mask[..., None] * 255, 3, axis=2)
    geometric = labeler_online.joint_augmentation(64, rand_augment=False)
    for _ in range(10):
        img, msk = geometric(*_pair(image, mask))
        assert img.shape == (3, 64, 64) and msk.shape == (1, 64, 64)
        assert ((img[0] > 127) == msk[0].bool()).float().mean() > 0.95  # up to antialiased borders
    # RandAugment's geometric operations move the mask exactly with the image.
    monkeypatch.setattr(labeler_online.JointRandAugment, "PHOTOMETRIC", ())
    moved = 0
    for _ in range(20):
        img, msk = labeler_online.JointRandAugment()(*_pair(image, mask))
        assert torch.equal(img[0], msk[0] * 255)
        moved += not torch.equal(msk[0], torch.from_numpy(mask))
    assert moved > 15
    monkeypatch.undo()
    for _ in range(10):
        img, msk = labeler_online.joint_augmentation(32)(*_pair(image, mask))
        assert set(msk.unique().tolist()) <= {0, 1} and img.dtype == torch.uint8


def _conv_extractor():
    proj = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)
    torch.nn.init.normal_(proj.weight, generator=torch.Generator().manual_seed(0))
    torch.nn.init.zeros_(proj.bias)
    return lambda x: proj(x).permute(0, 2, 3, 1)


def _online_samples(tmp_path, n=12, broken=()):
    """Red (class 0) and blue (class 1) squares on dark noise, as image files and a samples file."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    rows, arrays = [], []
    for k in range(n):
        image = rng.integers(0, 60, (48, 56, 3), dtype=np.uint8)
        mask = np.zeros((48, 56), bool)
        mask[8:40, 10:44] = True
        image[mask] = [[255, 0, 0], [0, 0, 255]][k % 2]
        path = tmp_path / f"img{k}.png"
        Image.fromarray(image).save(path)
        if k in broken:
            path.write_bytes(b"not an image")
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        masks = [] if k == 1 else [rle["counts"].decode()]  # sample 1 is a full-image sample
        rows.append(
            {"image_id": f"img{k}", "path": str(path), "height": 48, "width": 56, "label": k % 2, "masks": masks}
        )
        arrays.append((image, mask))
    samples = tmp_path / "samples.arrow"
    assert labeler_online.write_samples(samples, [rows[:5], [], rows[5:]]) == n
    return samples, arrays


@pytest.mark.parametrize("pooling", ["features", "logits"])
def test_train_online_learns_from_augmented_samples(tmp_path, pooling):
    samples, arrays = _online_samples(tmp_path)
    extractor = _conv_extractor()
    config = LabelerConfig(input_size=32, epochs=20, warmup_epochs=1, batch_size=4, hidden=16, lr=0.01, pooling=pooling)
    head = labeler_online.train_online(samples, extractor, config, num_classes=2, progress=False)
    correct = 0
    for k, (image, mask) in enumerate(arrays):
        resized = torch.from_numpy(backbones.resize([image], 32)[0])[None]
        tokens = extractor(backbones.normalise(resized))[0].detach()
        correct += labeler.label_image(head, tokens, mask[None], config).mask_classes[0, 0] == k % 2
    assert correct >= 11


def test_online_items_are_seeded_per_epoch_and_sample(tmp_path):
    samples, _ = _online_samples(tmp_path, n=4)
    data = labeler_online.OnlineSamples(samples, 32, seed=3)
    first = data[2]
    assert first[0].shape == (32, 32, 3) and first[0].dtype == torch.uint8 and first[1].shape == (32, 32)
    torch.manual_seed(123)
    assert torch.equal(data[2][0], first[0]) and torch.equal(data[2][1], first[1]), "independent of global RNG"
    data.epoch = 1
    assert not torch.equal(data[2][0], first[0]), "a new epoch draws new augmentations"
    import pickle

    assert pickle.loads(pickle.dumps(data))._table is None, "workers map the file themselves"


def test_online_training_is_resumable_independent_of_workers_and_records_bad_images(tmp_path):
    samples, _ = _online_samples(tmp_path, n=8, broken=(3,))
    config = LabelerConfig(input_size=32, epochs=3, warmup_epochs=1, batch_size=4, hidden=16)
    failures = []

    def train(workers, **kw):
        return labeler_online.train_online(
            samples,
            _conv_extractor(),
            config,
            num_classes=2,
            num_workers=workers,
            progress=False,
            on_error=lambda row, reason: failures.append((row["image_id"], reason)),
            **kw,
        )

    full = train(0)
    assert failures and {f[0] for f in failures} == {"img3"} and "not a recognised image" in failures[0][1]
    assert len(failures) == 3, "reported every epoch it is drawn (the build records it once)"
    ckpt = tmp_path / "head.safetensors"
    original_fit = labeler_online.fit

    def stopped_after_one_epoch(head, cfg, epoch_batches, steps, **kw):
        def batches(epoch):
            if epoch == 1:
                raise KeyboardInterrupt
            return epoch_batches(epoch)

        return original_fit(head, cfg, batches, steps, **kw)

    labeler_online.fit = stopped_after_one_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            train(2, checkpoint=ckpt, checkpoint_seconds=0)
    finally:
        labeler_online.fit = original_fit
    resumed = train(2, checkpoint=ckpt, resume=True)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_label_map_is_relabel_format_and_follows_the_cells(tmp_path):
    from multilabel_imagenet.builder import relabel_maps

    torch.manual_seed(0)
    head = labeler.LabelerHead(8, 16, 1000)
    feats = torch.randn(32, 32, 8)
    out = labeler.label_map(head, feats)
    assert out.shape == (2, 5, 15, 15) and out.dtype == np.float32
    path = tmp_path / "map.pt"
    torch.save(torch.from_numpy(out), path)
    np.testing.assert_array_equal(relabel_maps.read_map(path), out)
    # Cell (row 2, column 11) is the head on the mean of the patches that adaptive pooling assigns to it.
    rows, cols = slice(4, 7), slice(23, 26)  # floor(2*32/15)..ceil(3*32/15), floor(11*32/15)..ceil(12*32/15)
    logits = head(feats[rows, cols].reshape(-1, 8).mean(0, keepdim=True))[0]
    top = logits.topk(5)
    np.testing.assert_allclose(out[0, :, 2, 11], top.values.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[1, :, 2, 11], top.indices.numpy().astype(np.float32))


def test_config_validates_the_authors_settings():
    with pytest.raises(ValueError, match="pooling must be one of"):
        LabelerConfig(pooling="max")
    with pytest.raises(ValueError, match="needs training 'online'"):
        LabelerConfig(training="cached", pooling="logits")
    for name in ("training", "patch_rule", "drop_rule"):
        with pytest.raises(ValueError, match=name):
            LabelerConfig(**{name: "nope"})


def test_bilinear_patch_rule_samples_the_patch_centres():
    # 8 x 8 mask onto a 2 x 2 grid: bilinear (half-pixel centres, no antialiasing) reads source coordinate
    # (i + 0.5) * 4 - 0.5 = 1.5 or 5.5, i.e. the mean of pixels 1-2 (patch 0) or 5-6 (patch 1) along each axis.
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, 2, 6] = True  # touches the sample points of patch (0, 1)
    masks[1, 0, 0] = True  # overlaps patch (0, 0) but no sample point: falls back to its best-covered patch
    masks[2, 4:, :4] = True  # half of patch (1, 0) ... and its sample points (5-6, 1-2)
    masks[2, 3, 3] = True  # not a sample point of patch (0, 0)
    grid = labeler.masks_to_grid(masks, (2, 2), rule="bilinear")
    assert grid[0].tolist() == [[False, True], [False, False]]
    assert grid[1].tolist() == [[True, False], [False, False]]
    assert grid[2].tolist() == [[False, False], [True, False]]
    assert not grid[3].any()
    area = labeler.masks_to_grid(masks, (2, 2))  # our rule: a quarter-pixel fraction is not half a patch
    assert area[0].tolist() == [[False, True], [False, False]] and area[2].tolist() == [[False, False], [True, False]]


def test_bernoulli_patch_dropout_and_the_authors_fallback():
    grid = torch.zeros(3, 16, 16, dtype=torch.bool)
    grid[0] = True  # 256 foreground patches
    grid[1, 3, 3] = True  # one patch, certain to be dropped at rate 0.999
    kept = labeler.drop_patches(grid, 0.25, torch.Generator().manual_seed(1), "bernoulli")
    assert 0.6 < kept[0].float().mean() < 0.9 and kept[0].sum() != 192, "each patch on its own, not exactly 25%"
    draws = torch.rand(3, 256, generator=torch.Generator().manual_seed(1))  # the same draws, read independently
    np.testing.assert_array_equal(kept[0].flatten().numpy(), (draws[0] < 0.75).numpy())
    gone = labeler.drop_patches(grid, 0.999, torch.Generator().manual_seed(0), "bernoulli")
    assert gone[1].all() and gone[2].all(), "a mask left with no patch pools the whole image"
    assert labeler.drop_patches(grid, 0.999, torch.Generator().manual_seed(0))[1].sum() == 1, "ours keeps one"


def test_pooled_logits_features_versus_logits():
    torch.manual_seed(0)
    head = labeler.LabelerHead(3, 8, 5, dropout=0.0).eval()
    tokens = torch.randn(4, 3)
    weights = torch.tensor([[True, False, True, False], [True, True, True, True]])
    got_features = labeler.pooled_logits(head, tokens, weights, "features")
    got_logits = labeler.pooled_logits(head, tokens, weights, "logits")
    for b, idx in enumerate([[0, 2], [0, 1, 2, 3]]):
        torch.testing.assert_close(got_features[b], head(tokens[idx].mean(0)))
        torch.testing.assert_close(got_logits[b], torch.stack([head(tokens[i]) for i in idx]).mean(0))
    assert not torch.allclose(got_features, got_logits), "the head is not linear: the two differ"
    batched = labeler.pooled_logits(head, tokens[None].expand(2, -1, -1), weights, "logits")
    torch.testing.assert_close(batched, got_logits)


def test_label_image_pools_logits_when_asked():
    torch.manual_seed(0)
    head = labeler.LabelerHead(8, 16, 1000).eval()
    feats = torch.randn(4, 4, 8)
    masks = np.zeros((1, 40, 40), bool)
    masks[0, :20, :20] = True  # the top-left 2 x 2 patches
    out = labeler.label_image(head, feats, masks, LabelerConfig(pooling="logits", top_k=3))
    per_patch = head(feats.reshape(16, 8))
    region = torch.softmax(head(feats[:2, :2].reshape(4, 8)).mean(0), 0)
    whole = torch.softmax(per_patch.mean(0), 0)
    np.testing.assert_allclose(out.mask_scores[0], region.topk(3).values.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(out.global_scores, whole.topk(3).values.detach().numpy(), rtol=1e-5)


@pytest.mark.parametrize("workers", [0, 1])
def test_online_training_stops_on_a_failed_read_instead_of_recording_it(tmp_path, monkeypatch, workers):
    """Issue 16 item 2: EIO on every try is not a bad image: training stops with ImageReadError naming the file
    (handed back from a DataLoader worker as a value), nothing goes to on_error."""
    from fault_support import fail_reads

    from multilabel_imagenet import images

    samples, _ = _online_samples(tmp_path, n=4)
    victim = labeler_online.OnlineSamples(samples, 32).row(2)["path"]
    fail_reads(monkeypatch, victim)
    failures = []
    config = LabelerConfig(input_size=32, epochs=1, warmup_epochs=0, batch_size=4, hidden=16)
    with pytest.raises(images.ImageReadError, match=rf"{victim}: read failed 3 times \(EIO"):
        labeler_online.train_online(
            samples, _conv_extractor(), config, num_classes=2, num_workers=workers, progress=False,
            on_error=lambda row, reason: failures.append(reason),
        )  # fmt: skip
    assert failures == []
