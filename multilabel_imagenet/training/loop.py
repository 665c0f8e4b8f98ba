"""``train``: the paper's recipe on one machine (CPU, or CUDA with AMP) or several processes under ``torchrun``.

One run writes into its output folder::

    checkpoint.safetensors   the whole training state after the last completed epoch (see .checkpoint)
    log.jsonl                loss and learning rate every ``log_every`` steps and per epoch
    model/                   the final weights as a timm model folder (config.json + model.safetensors)
    eval.json                the ``evaluate`` report of the benchmarks named, when any

Resuming (``resume=True``) continues from ``checkpoint.safetensors`` and gives the weights an uninterrupted run
gives (on CPU; on CUDA with ``deterministic``, as its kernels otherwise need not be): every epoch's shuffle and
worker seeds depend on ``(seed, epoch, rank)`` alone (:class:`.data.TrainLoader`), and the generators of the main
process are saved.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from multilabel_imagenet import targets
from multilabel_imagenet.training import checkpoint as ckpt
from multilabel_imagenet.training.data import build_loader
from multilabel_imagenet.training.evaluate import EVAL_CROP_PCT, evaluate_model
from multilabel_imagenet.training.loss import MultiLabelBCE
from multilabel_imagenet.training.mixing import SoftMixUpCutMix
from multilabel_imagenet.training.recipe import (
    Recipe,
    build_optimizer,
    describe_groups,
    init_head_bias,
    lr_scheduler,
    unwrap,
)

CHECKPOINT = "checkpoint.safetensors"
LOG = "log.jsonl"
MODEL_DIR = "model"
REPORT = "eval.json"
AMP_MODES = ("auto", "bf16", "fp16", "off")


class TrainingError(ValueError):
    """A run that cannot start or continue as asked; the message says why and what to change."""


@dataclass(frozen=True)
class TrainConfig:
    """What a run trains on and how. ``dataset``: a dataset folder or a Hub repo id (with ``revision``);
    ``images``: the ImageNet root holding ``train/`` (``split_dirs`` as in :func:`multilabel_imagenet.load`);
    ``model``: a timm model name (1000 classes; ``model_kwargs`` go to ``timm.create_model``, e.g. ``channels``
    for a narrower ResNet; ``pretrained`` fetches timm's weights, ``init_checkpoint`` reads
    local safetensors weights: both for fine-tuning, "+Multi-label FT" of Table 3); ``scheme``/``profile``:
    the target (:mod:`multilabel_imagenet.targets`; ``one_hot`` is the single-label baseline), ``crop_aware`` the
    target that follows the crop, ``ambiguity`` a calibrated :class:`~multilabel_imagenet.targets.Ambiguity` JSON
    for ``+prior``/``+pairs``. ``amp``: ``auto`` (bf16 on CUDA, off on CPU), ``bf16``, ``fp16`` (with a gradient
    scaler) or ``off``. ``deterministic`` asks torch for deterministic kernels (cuDNN's deterministic algorithms,
    cuBLAS' fixed workspace; an op without one warns): slower on CUDA, but a resumed CUDA run then gives the
    uninterrupted run's weights. ``stop_after_epoch`` ends the run early (e.g. a job's time limit) with the schedule
    of ``recipe.epochs`` kept; resume it later."""

    dataset: str
    images: str | None
    model: str
    output: str
    scheme: str = targets.DEFAULT_SCHEME
    recipe: Recipe = field(default_factory=Recipe)
    revision: str | None = None
    split: str = "train"
    split_dirs: dict[str, str] | None = None
    profile: str | None = None
    crop_aware: bool = False
    ambiguity: str | None = None
    model_kwargs: dict[str, Any] | None = None
    pretrained: bool = False
    init_checkpoint: str | None = None
    seed: int = 0
    workers: int = 8
    device: str = "auto"
    amp: str = "auto"
    deterministic: bool = False
    log_every: int = 50
    stop_after_epoch: int | None = None
    eval_batch_size: int = 256
    eval_crop_pct: float = EVAL_CROP_PCT
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        targets.parse_scheme(self.scheme, self.profile)

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        keys = ("dataset", "revision", "split", "model", "scheme", "profile", "crop_aware", "ambiguity", "seed")
        out = {k: getattr(self, k) for k in keys}
        out.update(
            model_kwargs=self.model_kwargs or {},
            pretrained=self.pretrained,
            init_checkpoint=self.init_checkpoint,
            recipe=self.recipe.to_dict(),
        )
        return json.loads(json.dumps(out))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps({**asdict(self), "recipe": self.recipe.to_dict()}))


@dataclass
class TrainResult:
    """What :func:`train` did: epochs completed, whether it stopped early, files written, the eval report."""

    output: Path
    epochs_done: int
    stopped_early: bool
    checkpoint: Path
    model_dir: Path | None
    history: list[dict[str, Any]]
    results: dict[str, dict] | None = None


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    d = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return d


def _device(config: TrainConfig, d: _Dist) -> torch.device:
    if config.device == "auto":
        if torch.cuda.is_available():
            torch.cuda.set_device(d.local_rank)
            return torch.device("cuda", d.local_rank)
        return torch.device("cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", d.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _amp(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    mode = config.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    if mode != "off" and device.type != "cuda":
        raise TrainingError(f"--amp {mode} needs a CUDA device; this run is on {device}")
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


@contextlib.contextmanager
def _kernels(deterministic: bool) -> Iterator[None]:
    """With ``deterministic``: torch's deterministic algorithms (warning on ops that have none), cuDNN without
    autotuning and cuBLAS' fixed workspace (read when cuBLAS starts, so set before any CUDA work), for the run
    only; torch's previous settings come back afterwards."""
    if not deterministic:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_model(config: TrainConfig) -> nn.Module:
    """The timm model of ``config`` (1000 classes), with ``init_checkpoint`` loaded and the head bias set when the
    recipe asks."""
    import timm

    kwargs: dict[str, Any] = {**(config.model_kwargs or {}), "num_classes": 1000}
    if config.recipe.drop_path is not None:
        kwargs["drop_path_rate"] = config.recipe.drop_path
    try:
        model = timm.create_model(config.model, pretrained=config.pretrained, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise TrainingError(f"unknown timm model {config.model!r} (see timm.list_models())") from None
        raise
    if config.init_checkpoint is not None:
        from safetensors.torch import load_file

        path = Path(config.init_checkpoint)
        if not path.is_file():
            raise TrainingError(f"{path}: initial checkpoint not found")
        try:
            model.load_state_dict(load_file(str(path)))
        except RuntimeError as err:
            raise TrainingError(f"{path}: does not fit {config.model}: {err}") from None
    if config.recipe.head_bias_init:
        if config.recipe.smoothing is None:
            raise TrainingError("head_bias_init sets sigmoid outputs to the smoothing minimum: give a smoothing range")
        init_head_bias(model, config.recipe.smoothing[0])
    return model


def _data(config: TrainConfig, d: _Dist, device: torch.device):
    from multilabel_imagenet.dataset.loading import load

    if config.images is None:
        raise TrainingError("training needs the images: give the ImageNet root (--images) holding train/")
    common = {"revision": config.revision, "cache_dir": config.cache_dir}
    labels = load(
        config.dataset, "labels", config.split, imagenet_root=config.images, split_dirs=config.split_dirs, **common
    )
    proposals = load(config.dataset, "proposals", config.split, **common) if config.crop_aware else None
    ambiguity = None
    if config.ambiguity is not None:
        path = Path(config.ambiguity)
        if not path.is_file():
            raise TrainingError(f"{path}: ambiguity file not found")
        ambiguity = targets.Ambiguity.from_dict(json.loads(path.read_text(encoding="utf-8")))
    return build_loader(
        labels,
        config.scheme,
        config.recipe,
        proposals=proposals,
        crop_aware=config.crop_aware,
        profile=config.profile,
        ambiguity=ambiguity,
        num_workers=config.workers,
        seed=config.seed,
        rank=d.rank,
        world_size=d.world,
        pin_memory=device.type == "cuda",
    )


def _gather_rng(d: _Dist) -> list:
    state = ckpt.rng_state()
    if d.world == 1:
        return [state]
    states: list = [None] * d.world
    dist.all_gather_object(states, state)
    return states


def _mean_across(value: float, count: int, d: _Dist, device: torch.device) -> float:
    if d.world == 1:
        return value / max(count, 1)
    t = torch.tensor([value, float(count)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0] / t[1].clamp(min=1))


class _Log:
    """Lines for people (``echo``) and JSON records in ``log.jsonl``, on the main process only."""

    def __init__(self, path: Path | None, echo: Callable[[str], object] | None):
        self.path, self.echo = path, echo

    def __call__(self, record: dict[str, Any], line: str | None = None) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.echo is not None and line is not None:
            self.echo(line)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    benchmarks: Mapping[str, tuple[Any, Sequence[Path]]] | None = None,
    echo: Callable[[str], object] | None = print,
) -> TrainResult:
    """Run ``config``; with ``resume``, continue from the output's checkpoint when there is one. ``benchmarks``
    (from :func:`.evaluate.prepare_benchmarks`, or ``{name: (Benchmark, image paths)}``) are scored after the last
    epoch into ``eval.json``. ``echo`` prints progress lines (None: quiet)."""
    with _kernels(config.deterministic):
        return _train(config, resume, benchmarks, echo)


def _train(
    config: TrainConfig,
    resume: bool,
    benchmarks: Mapping[str, tuple[Any, Sequence[Path]]] | None,
    echo: Callable[[str], object] | None,
) -> TrainResult:
    d = _init_distributed(config.device)
    device = _device(config, d)
    amp_dtype = _amp(config, device)
    recipe = config.recipe
    output = Path(config.output)
    checkpoint_path = output / CHECKPOINT
    if checkpoint_path.exists() and not resume:
        raise TrainingError(f"{checkpoint_path} exists: pass --resume to continue that run, or choose another --output")
    if d.main:
        output.mkdir(parents=True, exist_ok=True)
    log = _Log(output / LOG if d.main else None, echo if d.main else None)

    _seed_everything(config.seed)
    model = create_model(config).to(device)
    optimizer = build_optimizer(model, recipe)
    loader = _data(config, d, device)
    scheduler = lr_scheduler(optimizer, recipe, len(loader))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    start_epoch, history = 0, []
    if resume and checkpoint_path.exists():
        saved = ckpt.read_checkpoint(checkpoint_path)
        _check_same_run(saved, config, len(loader) * d.world)
        same_world = len(saved.rng) == d.world
        saved.restore(
            model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, rank=d.rank if same_world else None
        )
        start_epoch, history = saved.epoch, saved.history
        note = "" if same_world else f" (saved with {len(saved.rng)} processes, now {d.world}: not bit-exact)"
        log({"event": "resume", "epoch": start_epoch}, f"resumed {checkpoint_path} after epoch {start_epoch}{note}")
    else:
        log(
            {"event": "start", "config": config.to_dict()},
            f"training {config.model} on {config.scheme}: {describe_groups(optimizer.param_groups)}",
        )
    net = (
        nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if d.world > 1
        else model
    )
    criterion = MultiLabelBCE(recipe.smoothing, recipe.smoothing_mode, recipe.skip_empty, recipe.pos_weight).to(device)
    mixer = SoftMixUpCutMix(recipe.mixup, recipe.cutmix, recipe.mixup_prob, recipe.mixup_switch_prob)
    run_config = {
        "identity": config.identity(),
        "run": config.to_dict(),
        "world_size": d.world,
        "global_steps_per_epoch": len(loader) * d.world,
    }
    last = recipe.epochs if config.stop_after_epoch is None else min(recipe.epochs, config.stop_after_epoch)

    for epoch in range(start_epoch, last):
        mixer.enabled = not (recipe.mixup_off_epoch and epoch >= recipe.mixup_off_epoch)
        summary = _train_epoch(
            net, loader, optimizer, scheduler, scaler, criterion, mixer, epoch, config, d, device, amp_dtype, log
        )
        history.append(summary)
        rng = _gather_rng(d)
        if d.main:
            ckpt.save_checkpoint(
                checkpoint_path,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=epoch + 1,
                config=run_config,
                rng=rng,
                scaler=scaler,
                history=history,
            )
        if d.world > 1:
            dist.barrier()
    done = max(start_epoch, last)
    result = TrainResult(output, done, done < recipe.epochs, checkpoint_path, None, history)
    if done < recipe.epochs:
        log(
            {"event": "stopped", "epoch": done},
            f"stopped after epoch {done} of {recipe.epochs}; continue with --resume",
        )
        return result
    if d.main:
        result.model_dir = _save_model(model, output / MODEL_DIR, recipe, config.eval_crop_pct)
        if benchmarks:
            result.results = _final_eval(model, benchmarks, config, device, log, output)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def _check_same_run(saved: ckpt.Checkpoint, config: TrainConfig, global_steps: int) -> None:
    before, now = saved.config.get("identity", {}), config.identity()
    differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if "recipe" in differ:
        differ.remove("recipe")
        old, new = before.get("recipe", {}), now["recipe"]
        differ += [f"recipe.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differ:
        parts = ", ".join(f"{k}: {_get(before, k)!r} -> {_get(now, k)!r}" for k in differ)
        raise TrainingError(f"{saved.path} was written by a different run ({parts}); use another --output")
    if saved.config.get("global_steps_per_epoch") != global_steps:
        raise TrainingError(
            f"{saved.path}: {saved.config.get('global_steps_per_epoch')} steps per epoch then, {global_steps} now "
            "(the split changed size?)"
        )


def _get(data: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, Mapping) else None
    return data


def _train_epoch(net, loader, optimizer, scheduler, scaler, criterion, mixer, epoch, config, d, device, amp_dtype, log):
    recipe = config.recipe
    net.train()
    loader.set_epoch(epoch)
    steps = len(loader)
    total = torch.zeros((), dtype=torch.float64, device=device)
    window, window_start, seen, start = torch.zeros_like(total), time.perf_counter(), 0, time.perf_counter()
    for step, batch in enumerate(loader):
        images = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        if mixer.active:
            images, target = mixer(images, target)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(images)
        loss = criterion(logits, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if recipe.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), recipe.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        total += loss.detach()
        window += loss.detach()
        seen += images.shape[0]
        if config.log_every and ((step + 1) % config.log_every == 0 or step + 1 == steps):
            n = (step % config.log_every) + 1
            mean = _mean_across(float(window), n, d, device)
            if not math.isfinite(mean):
                raise TrainingError(
                    f"epoch {epoch + 1} step {step + 1}: the loss is {mean}; lower --lr or check the data"
                )
            rate = seen * d.world / (time.perf_counter() - window_start)
            log(
                {
                    "epoch": epoch + 1,
                    "step": step + 1,
                    "global_step": epoch * steps + step + 1,
                    "loss": mean,
                    "lr": lr,
                    "images_per_s": rate,
                },
                f"epoch {epoch + 1}/{recipe.epochs} step {step + 1}/{steps} loss {mean:.5f} lr {lr:.3e} "
                f"{rate:.0f} img/s",
            )
            window.zero_()
            window_start, seen = time.perf_counter(), 0
    mean = _mean_across(float(total), steps, d, device)
    summary = {
        "epoch": epoch + 1,
        "loss": mean,
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    log(
        {"event": "epoch", **summary},
        f"epoch {epoch + 1}/{recipe.epochs}: mean loss {mean:.5f} ({summary['seconds']:.0f} s)",
    )
    return summary


def _save_model(model: nn.Module, folder: Path, recipe: Recipe, crop_pct: float) -> Path:
    """The final weights as a timm model folder (``evaluate --model FOLDER`` reads it), input size as trained."""
    from timm.models import save_for_hf

    model = unwrap(model)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    model.pretrained_cfg = {**cfg, "input_size": (3, recipe.img_size, recipe.img_size), "crop_pct": crop_pct}
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder


def _final_eval(model, benchmarks, config: TrainConfig, device, log, output: Path) -> dict[str, dict]:
    from multilabel_imagenet.evaluation import report

    results = evaluate_model(
        unwrap(model),
        benchmarks,
        img_size=config.recipe.img_size,
        crop_pct=config.eval_crop_pct,
        batch_size=config.eval_batch_size,
        num_workers=config.workers,
        device=str(device),
    )
    report.write_json(results, output / REPORT)
    log({"event": "eval", "report": str(output / REPORT)}, report.format_table(results) + f"\nwrote {output / REPORT}")
    return results
