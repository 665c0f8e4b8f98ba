import json

import numpy as np
import pytest
import torch

from multilabel_imagenet.builder import labeler
from multilabel_imagenet.builder.labeler import FeatureCache, LabelerConfig


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


def test_masked_mean_and_global_pool():
    feats = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    grid = torch.zeros(1, 2, 3, dtype=torch.bool)
    grid[0, 0, 1] = grid[0, 1, 2] = True
    np.testing.assert_allclose(labeler.masked_mean(feats, grid)[0], (feats[0, 1] + feats[1, 2]) / 2)
    np.testing.assert_allclose(labeler.global_pool(feats[None])[0], feats.reshape(6, 4).mean(0))


def test_learning_rate_schedule():
    c = LabelerConfig(epochs=10, warmup_epochs=2, lr=0.1)
    lrs = [labeler.learning_rate(c, s, 5) for s in range(50)]
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
    head = labeler.train_from_cache(cache, config, num_classes=5, checkpoint=ckpt, log=log, progress=False)
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
    full = labeler.train_from_cache(cache, config, num_classes=5, progress=False)

    ckpt = tmp_path / "head.safetensors"
    original_fit = labeler.fit

    def interrupted_fit(head, cfg, epoch_batches, steps, **kw):
        def stop_at_two(epoch):
            if epoch == 2:
                raise KeyboardInterrupt
            return epoch_batches(epoch)

        return original_fit(head, cfg, stop_at_two, steps, **kw)

    labeler.fit = interrupted_fit
    try:
        with pytest.raises(KeyboardInterrupt):
            labeler.train_from_cache(
                cache, config, num_classes=5, checkpoint=ckpt, progress=False, checkpoint_seconds=0
            )
    finally:
        labeler.fit = original_fit
    assert labeler.load_checkpoint(ckpt)[2] == 2
    resumed = labeler.train_from_cache(cache, config, num_classes=5, checkpoint=ckpt, resume=True, progress=False)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = LabelerConfig(epochs=5, warmup_epochs=1, batch_size=16, hidden=16)
    with pytest.raises(ValueError, match="different configuration"):
        labeler.train_from_cache(cache, other, num_classes=5, checkpoint=ckpt, resume=True, progress=False)


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
    cache = labeler.build_feature_cache([(feats, masks, [((0,), 7), ((0, 1), 9), ((), 3)])], config)
    assert cache.features.shape == (3, 3, 2) and cache.labels.tolist() == [7, 9, 3]
    assert torch.allclose(cache.features[0].float(), torch.tensor([1.0, 0.0]))
    assert torch.allclose(cache.features[1].float().sum(1), torch.ones(3), atol=1e-3), "union of both masks"
    counts = cache.features[2].float() * 12  # a full-image sample keeps 12 of 16 patches per view
    assert torch.allclose(counts, counts.round(), atol=0.01) and not torch.equal(counts[0], counts[1])
    clean = labeler.build_feature_cache([(feats, masks, [((), 3)])], LabelerConfig(cache_views=1, patch_drop=0))
    assert torch.allclose(clean.features[0, 0].float(), torch.tensor([0.25, 0.25])), "full image = global mean"
    with pytest.raises(ValueError, match="no training samples"):
        labeler.build_feature_cache([(feats, masks, [])], config)


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
    geometric = labeler.joint_augmentation(64, rand_augment=False)
    for _ in range(10):
        img, msk = geometric(*_pair(image, mask))
        assert img.shape == (3, 64, 64) and msk.shape == (1, 64, 64)
        assert ((img[0] > 127) == msk[0].bool()).float().mean() > 0.95  # up to antialiased borders
    # RandAugment's geometric operations move the mask exactly with the image.
    monkeypatch.setattr(labeler.JointRandAugment, "PHOTOMETRIC", ())
    moved = 0
    for _ in range(20):
        img, msk = labeler.JointRandAugment()(*_pair(image, mask))
        assert torch.equal(img[0], msk[0] * 255)
        moved += not torch.equal(msk[0], torch.from_numpy(mask))
    assert moved > 15
    monkeypatch.undo()
    for _ in range(10):
        img, msk = labeler.joint_augmentation(32)(*_pair(image, mask))
        assert set(msk.unique().tolist()) <= {0, 1} and img.dtype == torch.uint8


def test_train_online_runs_with_a_frozen_extractor():
    rng = np.random.default_rng(0)
    samples = []
    for k in range(12):
        colour = np.array([[255, 0, 0], [0, 0, 255]][k % 2], np.uint8)
        image = rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)
        mask = np.zeros((48, 48), bool)
        mask[8:40, 8:40] = True
        image[mask] = colour
        samples.append((image, mask, k % 2))
    proj = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)
    torch.nn.init.normal_(proj.weight, generator=torch.Generator().manual_seed(0))

    def extractor(x):
        return proj(x).permute(0, 2, 3, 1)

    config = LabelerConfig(input_size=32, epochs=8, warmup_epochs=1, batch_size=4, hidden=16, lr=0.05)
    head = labeler.train_online(samples, extractor, config, lambda b: b.float() / 255, num_classes=2, progress=False)
    feats = extractor(torch.stack([torch.from_numpy(s[0]).permute(2, 0, 1) for s in samples]).float() / 255)
    preds = [
        labeler.label_image(head, f.detach(), s[1][None], config).mask_classes[0, 0]
        for f, s in zip(feats, samples, strict=True)
    ]
    assert np.mean(np.array(preds) == np.array([s[2] for s in samples])) >= 0.9


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
