"""The training recipe: soft MixUp/CutMix, the smoothing range, the timm Mixup guard, AdamW groups and schedule,
safetensors checkpoints, the seeded loader, and `train` resuming to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from unittest.mock import patch

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from test_dataset_support import BUILD, synthetic_records

from multilabel_imagenet.cli import main
from multilabel_imagenet.dataset import loading, writer
from multilabel_imagenet.evaluation import Benchmark
from multilabel_imagenet.training import (
    DenseTargetError,
    MultiLabelBCE,
    Recipe,
    SoftMixUpCutMix,
    build_loader,
    build_optimizer,
    loop,
    lr_scheduler,
    param_groups,
    smooth_targets,
)
from multilabel_imagenet.training import checkpoint as ckpt
from multilabel_imagenet.training.loop import TrainConfig, TrainingError, train
from multilabel_imagenet.training.recipe import WarmupCosine


def _constant_images(values: torch.Tensor, size: int = 16) -> torch.Tensor:
    return values.view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_soft_mixing_keeps_targets_in_range_and_uses_the_images_lambda(kind):
    mixer = SoftMixUpCutMix(mixup_alpha=0.8 if kind == "mixup" else 0, cutmix_alpha=1.0 if kind == "cutmix" else 0)
    generator = torch.Generator().manual_seed(0)
    for seed in range(8):
        torch.manual_seed(seed)
        targets = torch.rand(6, 1000, generator=generator) ** 4
        targets[0] = 0
        targets[1, 3] = 1.0
        images = _constant_images(torch.arange(6, dtype=torch.float32) + 1)
        mixed, mixed_targets = mixer(images, targets)
        assert mixed_targets.shape == (6, 1000) and mixed_targets.dtype == targets.dtype
        assert mixed_targets.min() >= 0 and mixed_targets.max() <= 1
        rolled_images, rolled_targets = images.roll(1, 0), targets.roll(1, 0)
        for i in range(6):
            if kind == "mixup":  # image i = lam * a_i + (1 - lam) * a_{i-1}, constant over pixels
                a, b = images[i, 0, 0, 0], rolled_images[i, 0, 0, 0]
                lam = float((mixed[i, 0, 0, 0] - b) / (a - b))
            else:  # the fraction of pixels still from image i
                lam = float((mixed[i] == images[i]).float().mean())
            expected = lam * targets[i] + (1 - lam) * rolled_targets[i]
            torch.testing.assert_close(mixed_targets[i], expected, atol=1e-5, rtol=0)


def test_soft_mixing_switch_probability_and_checks():
    torch.manual_seed(0)
    images, targets = _constant_images(torch.arange(4.0) + 1), torch.rand(4, 10)
    off = SoftMixUpCutMix(0.8, 1.0, prob=0.0)
    assert off(images, targets)[0] is images
    with pytest.raises(ValueError, match=r"floating \[B, C\] tensor"):
        SoftMixUpCutMix()(images, torch.tensor([1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        SoftMixUpCutMix()(images, targets * 2)
    with pytest.raises(ValueError, match="3 targets for a batch of 4"):
        SoftMixUpCutMix()(images, targets[:3])


def test_timm_mixup_guard_fires_on_dense_targets():
    from timm.data import FastCollateMixup, Mixup

    x, dense = torch.randn(4, 3, 8, 8), torch.rand(4, 1000)
    with pytest.raises(DenseTargetError, match=r"\[B\*C, C\].*SoftMixUpCutMix"):
        Mixup(mixup_alpha=0.8, num_classes=1000)(x, dense)
    assert Mixup(mixup_alpha=0.8, num_classes=1000)(x, torch.tensor([1, 2, 3, 4]))[1].shape == (4, 1000)
    assert Mixup(mixup_alpha=0.8, num_classes=1000, multi_label=True, label_smoothing=0)(x, dense)[1].shape == (4, 1000)
    batch = [(np.zeros((3, 8, 8), dtype=np.uint8), torch.rand(1000)) for _ in range(4)]
    with pytest.raises(DenseTargetError, match="FastCollateMixup"):
        FastCollateMixup(mixup_alpha=0.8, num_classes=1000)(batch)


def test_smoothing_range_is_applied():
    target = torch.tensor([[0.0, 1.0, 0.72, 0.00005, 0.97]])
    clamp = smooth_targets(target, (0.0001, 0.95), "clamp")
    affine = smooth_targets(target, (0.0001, 0.95), "affine")
    torch.testing.assert_close(clamp, torch.tensor([[0.0001, 0.95, 0.72, 0.0001, 0.95]]))
    torch.testing.assert_close(affine, target * (0.95 - 0.0001) + 0.0001)
    for out in (clamp, affine):
        assert out.min() >= 0.0001 - 1e-9 and out.max() <= 0.95 + 1e-7
    assert smooth_targets(target, None) is target
    with pytest.raises(ValueError, match="0 <= min < max <= 1"):
        smooth_targets(target, (0.5, 0.2))

    logits, targets = torch.randn(3, 5), torch.tensor([[0, 1, 0, 0, 0.5], [0.0] * 5, [0, 0, 0, 1, 0]])
    loss = MultiLabelBCE((0.0001, 0.95))(logits, targets)
    keep = torch.tensor([0, 2])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], targets[keep].clamp(0.0001, 0.95))
    torch.testing.assert_close(loss, expected)
    kept = MultiLabelBCE((0.0001, 0.95), skip_empty=False)(logits, targets)
    torch.testing.assert_close(
        kept, torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.clamp(0.0001, 0.95))
    )
    assert MultiLabelBCE()(logits[1:2], targets[1:2]).item() == 0.0


def test_head_has_no_weight_decay_and_schedule_warms_up_then_decays():
    model = timm.create_model("test_resnet", num_classes=1000, pretrained=False)
    groups = {g["name"]: g for g in param_groups(model, Recipe())}
    assert set(groups) == {"decay", "head"} and groups["head"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in model.get_classifier().parameters()}
    assert groups["decay"]["weight_decay"] == 0.15
    timm_like = {g["name"]: g for g in param_groups(model, Recipe(no_decay_norm_bias=True))}
    assert all(p.ndim > 1 for p in timm_like["decay"]["params"]) and timm_like["no_decay"]["weight_decay"] == 0.0

    optimizer = build_optimizer(model, Recipe())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["lr"] == 1e-3
    schedule = lr_scheduler(optimizer, Recipe(epochs=10, warmup_epochs=5), steps_per_epoch=2)
    lrs = []
    for _ in range(20):
        lrs.append(schedule.get_last_lr()[0])
        schedule.step()
    np.testing.assert_allclose(lrs[:10], [1e-3 * (i + 1) / 10 for i in range(10)])
    assert lrs[10] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[19] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 9 / 10)))
    again = WarmupCosine(optimizer, 20, 10)
    again.load_state_dict(schedule.state_dict())
    assert again.get_last_lr() == schedule.get_last_lr()
    with pytest.raises(ValueError, match="same dataset, batch size and epochs"):
        WarmupCosine(optimizer, 30, 10).load_state_dict(schedule.state_dict())


def test_checkpoint_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=1000, pretrained=False)
    optimizer = build_optimizer(model, Recipe())
    schedule = lr_scheduler(optimizer, Recipe(epochs=2, warmup_epochs=1), 3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    schedule.step()
    path = ckpt.save_checkpoint(
        tmp_path / "c.safetensors", model=model, optimizer=optimizer, scheduler=schedule, epoch=1, config={"a": 1}
    )
    expected_random = torch.rand(3)
    saved = ckpt.read_checkpoint(path)
    assert saved.epoch == 1 and saved.config == {"a": 1}
    model2 = timm.create_model("test_resnet", num_classes=1000, pretrained=False)
    optimizer2 = build_optimizer(model2, Recipe())
    schedule2 = lr_scheduler(optimizer2, Recipe(epochs=2, warmup_epochs=1), 3)
    saved.restore(model=model2, optimizer=optimizer2, scheduler=schedule2)
    assert torch.equal(torch.rand(3), expected_random)  # generators restored
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state, state2 = optimizer.state_dict(), optimizer2.state_dict()
    for index, values in state["state"].items():
        for key, value in values.items():
            assert torch.equal(value, state2["state"][index][key])
    assert schedule2.get_last_lr() == schedule.get_last_lr()
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="bad.safetensors: cannot be read"):
        ckpt.read_checkpoint(tmp_path / "bad.safetensors")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "mini"
    labels, proposals = synthetic_records(root, num_train=8, num_val=3)
    folder = writer.write_dataset(root.parent / "multilabel-imagenet", BUILD, labels=labels, proposals=proposals)
    return root, folder


def test_loader_batches_and_seeded_epochs(mini, tmp_path):
    root, folder = mini
    labels = loading.load(folder, "labels", "train", imagenet_root=root, cache_dir=tmp_path)
    proposals = loading.load(folder, "proposals", "train", cache_dir=tmp_path)
    recipe = Recipe(img_size=32, batch_size=4)
    loader = build_loader(labels, "local_soft+original", recipe, num_workers=0, seed=3)
    loader.set_epoch(1)
    torch.manual_seed(0)
    first = [b["image_id"] for b in loader]
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["target"].shape == (4, 1000)
    assert batch["target"][torch.arange(4), batch["label"]].eq(1).all()  # +original
    loader.set_epoch(1)
    assert [b["image_id"] for b in loader] == first
    loader.set_epoch(2)
    assert [b["image_id"] for b in loader] != first
    crop_aware = build_loader(
        labels, "local_soft", recipe, proposals=proposals, crop_aware=True, num_workers=0, batch_size=2
    )
    assert next(iter(crop_aware))["box"].shape == (2, 4)
    timm_recipe = Recipe(img_size=32, batch_size=2, transforms="timm")
    for aware in (False, True):  # timm's train transforms, its crop replaced by the box crop when crop-aware
        timm_loader = build_loader(
            labels, "local_soft", timm_recipe, proposals=proposals, crop_aware=aware, num_workers=0
        )
        assert next(iter(timm_loader))["image"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="no image column"):
        build_loader(loading.load(folder, "labels", "train", cache_dir=tmp_path), recipe=recipe)
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        build_loader(labels, recipe=Recipe(img_size=32, batch_size=16), num_workers=0)


def _val_benchmark(root) -> tuple[Benchmark, list]:
    rows = [json.loads(line) for line in (root / "ground_truth" / "validation.jsonl").read_text().splitlines()]
    targets = np.zeros((len(rows), 1000), dtype=bool)
    for i, r in enumerate(rows):
        targets[i, r["labels"]] = True
    ids = tuple(r["path"] for r in rows)
    bench = Benchmark("synthetic-val", ids, "multilabel", "synthetic", targets, np.array([r["label"] for r in rows]))
    return bench, [root / "val" / r["path"] for r in rows]


def _config(mini, output, **changes) -> TrainConfig:
    root, folder = mini
    recipe = Recipe(epochs=2, batch_size=4, img_size=32, warmup_epochs=1)
    base = dict(dataset=str(folder), images=str(root), model="test_resnet", output=str(output), recipe=recipe)
    return TrainConfig(**{**base, "workers": 0, "log_every": 1, **changes})


def test_resumed_run_reaches_the_weights_of_an_uninterrupted_run(mini, tmp_path):
    root, folder = mini
    whole = train(_config(mini, tmp_path / "whole"), benchmarks={"synthetic-val": _val_benchmark(root)}, echo=None)
    assert whole.epochs_done == 2 and not whole.stopped_early
    report = json.loads((tmp_path / "whole" / "eval.json").read_text())
    assert 0 <= report["synthetic-val"]["map_per_sample"] <= 100 and report["synthetic-val"]["n_images"] == 3

    args = ["train", "--dataset", str(folder), "--images", str(root), "--model", "test_resnet"]
    args += ["--output", str(tmp_path / "parts"), "--epochs", "2", "--batch-size", "4", "--img-size", "32"]
    args += ["--warmup-epochs", "1", "--workers", "0", "--log-every", "1"]
    first = CliRunner().invoke(main, [*args, "--stop-after-epoch", "1"])
    assert first.exit_code == 0, first.output
    assert "stopped after epoch 1 of 2" in first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "exists: pass --resume" in again.output
    other = CliRunner().invoke(main, [*args, "--resume", "--scheme", "one_hot"])
    assert other.exit_code == 1 and "scheme: 'local_soft+original' -> 'one_hot'" in other.output
    resumed = CliRunner().invoke(main, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "resumed" in resumed.output and "weights:" in resumed.output

    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "parts" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "step" in r]
    assert [r["global_step"] for r in steps] == [1, 2, 3, 4] and all(r["loss"] > 0 and "lr" in r for r in steps)
    whole_steps = [
        r for r in map(json.loads, (tmp_path / "whole" / "log.jsonl").read_text().splitlines()) if "step" in r
    ]
    assert [r["loss"] for r in steps] == [r["loss"] for r in whole_steps]


def test_train_refuses_what_it_cannot_do(mini, tmp_path):
    with pytest.raises(TrainingError, match="needs a CUDA device"):
        train(_config(mini, tmp_path / "a", amp="bf16", device="cpu"), echo=None)
    with pytest.raises(TrainingError, match="unknown timm model 'no_such_net'"):
        train(_config(mini, tmp_path / "b", model="no_such_net"), echo=None)
    with pytest.raises(ValueError, match="unknown scheme"):
        _config(mini, tmp_path / "c", scheme="soft_local")
    root, folder = mini
    args = ["train", "--dataset", str(folder), "--images", str(root), "--model", "test_resnet"]
    args += ["--output", str(tmp_path / "d"), "--eval", "real", "--eval-images", str(root / "val")]
    result = CliRunner().invoke(main, args)  # the benchmark's images are looked for before any training
    assert result.exit_code == 1 and "images of 'real' are missing" in result.output
    assert not (tmp_path / "d").exists()
    result = CliRunner().invoke(main, [*args[:7], "--smoothing", "0.9,0.1"])
    assert result.exit_code == 1 and "0 <= min < max <= 1" in result.output


def test_deterministic_kernels_hold_for_the_run_only(mini, tmp_path):
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    seen = []
    with patch.object(loop, "_train", lambda *args: seen.append(torch.are_deterministic_algorithms_enabled())):
        train(_config(mini, tmp_path / "run", deterministic=True), echo=None)
        train(_config(mini, tmp_path / "run2"), echo=None)
    assert seen == [True, before[0]]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16 autocast, the GPU path)")
@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_train_runs_on_cuda_and_resumes_to_the_same_weights(mini, tmp_path, amp):
    """The GPU path of `train` (issue 17): two epochs on CUDA, in float32, bf16 and fp16 (gradient scaler), finish
    with finite losses; stopped after epoch 1 and resumed with deterministic kernels, they reach the uninterrupted
    run's weights."""
    root, folder = mini
    whole = train(_config(mini, tmp_path / "whole", device="cuda", amp=amp, deterministic=True), echo=None)
    assert whole.epochs_done == 2
    parts = _config(mini, tmp_path / "parts", device="cuda", amp=amp, deterministic=True)
    train(replace(parts, stop_after_epoch=1), echo=None)
    train(parts, resume=True, echo=None)
    log = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log if "step" in r)
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "parts" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
